import logging

from django.conf import settings
from django.contrib import admin
from django.http import JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from config.health import health_report

logger = logging.getLogger(__name__)


@require_safe
def healthz(request):
    """200 or 503 with the parts that are not reachable (GET, or HEAD as monitors probe:
    the same status, no body). The drivers' errors name hosts,
    ports and users: they go to the log, and into the answer only with DEBUG on (the
    endpoint needs no login)."""
    report = health_report()
    for name, error in report["problems"].items():
        logger.warning("healthz: the %s is unreachable: %s", name, error)
    if not settings.DEBUG:
        report["problems"] = dict.fromkeys(report["problems"], "unreachable")
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


def permission_denied(request, exception):
    """The 403 page in the admin's frame: staff sent here by a link or a bookmark see who
    they are logged in as, what was refused and whom to ask, with the admin's navigation
    (Django's own page is a bare "403 Forbidden")."""
    context = {**admin.site.each_context(request), "reason": str(exception or "")}
    return render(request, "403.html", context, status=403)
