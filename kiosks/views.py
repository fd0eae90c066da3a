"""Kiosk endpoints: the heartbeat door kiosks call, and the staff heartbeat dashboard."""

import json

from django.contrib import admin
from django.contrib.auth.decorators import login_not_required, permission_required
from django.http import JsonResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from kiosks.dashboard import CHART_HEIGHT, CHART_WIDTH, HOURS, dashboard
from kiosks.heartbeats import HeartbeatProblem, heartbeat_record, parse_heartbeat
from kiosks.models import Kiosk

TOKEN_HEADER = "X-Kiosk-Token"


@csrf_exempt  # called by devices, which prove who they are with their token instead
@login_not_required
@require_POST
def heartbeat(request, kiosk_id: int):
    """POST /kiosks/<id>/heartbeat with header X-Kiosk-Token and a JSON body such as
    {"charging": true, "screen_state": true, "battery_level": 87, "connection_status": true,
    "mode": "kiosk"}. 200 when recorded; 400 naming the bad field; 403 for a wrong token."""
    token = request.headers.get(TOKEN_HEADER, "")
    kiosk = Kiosk.objects.filter(pk=kiosk_id, is_active=True).first()
    # The same answer for an unknown kiosk and a wrong token: nothing to learn by probing.
    if kiosk is None or not token or not constant_time_compare(token, kiosk.token):
        return JsonResponse({"error": f"wrong or missing {TOKEN_HEADER}"}, status=403)
    try:
        payload = json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # the last: nested too deeply
        return JsonResponse({"error": "The body must be JSON.", "field": "body"}, status=400)
    try:
        report = parse_heartbeat(payload)
    except HeartbeatProblem as problem:
        return JsonResponse({"error": str(problem), "field": problem.field}, status=400)
    now = timezone.now()
    heartbeat_record(kiosk=kiosk, report=report, now=now)
    return JsonResponse({"ok": True, "kiosk": kiosk.pk, "received_at": now.isoformat()})


@permission_required("kiosks.view_kiosk", raise_exception=True)
def heartbeat_dashboard(request):
    """Admin page (staff who may view kiosks; wrapped by admin_view in config.urls):
    connectivity per project."""
    now = timezone.now()
    panels = dashboard(now=now)
    context = {
        **admin.site.each_context(request),
        "title": "Heartbeat dashboard",
        "panels": panels,
        "now": now,
        "hours": HOURS,
        "chart_width": CHART_WIDTH,
        "chart_height": CHART_HEIGHT,
        "totals": {
            "kiosks": sum(len(p.kiosks) for p in panels),
            "online": sum(p.online for p in panels),
            "unhealthy": sum(p.unhealthy for p in panels),
        },
    }
    return TemplateResponse(request, "kiosks/dashboard.html", context)
