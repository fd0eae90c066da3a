"""The partner portal's door from WhatsApp: /partners/wa-auth?token=... verifies the signed
24-hour link and signs the partner in (no password), then shows the run it was about."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET

from production_runs.deeplink import LinkExpired, LinkInvalid, read_token
from production_runs.models import ProductionRun

SESSION_KEY = "partner_id"


@require_GET
def wa_auth(request: HttpRequest) -> HttpResponse:
    try:
        link = read_token(request.GET.get("token", ""))
    except LinkExpired:
        return render(request, "production_runs/link_refused.html", {"expired": True}, status=403)
    except LinkInvalid:
        return render(request, "production_runs/link_refused.html", {"expired": False}, status=403)
    run = ProductionRun.objects.filter(pk=link.run_id, partner_id=link.partner_id).first()
    if run is None:  # reassigned or deleted since the link was sent
        return render(request, "production_runs/link_refused.html", {"expired": False}, status=403)
    request.session.cycle_key()
    request.session[SESSION_KEY] = link.partner_id
    return redirect("partner_run", run_id=run.pk)


@require_GET
def partner_run(request: HttpRequest, run_id: int) -> HttpResponse:
    partner_id = request.session.get(SESSION_KEY)
    if partner_id is None:
        return render(request, "production_runs/link_refused.html", {"expired": False}, status=403)
    run = get_object_or_404(
        ProductionRun.objects.select_related("partner", "design"), pk=run_id, partner_id=partner_id
    )
    return render(request, "production_runs/partner_run.html", {"run": run})
