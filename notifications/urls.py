"""Public URLs of the delivery engine: provider webhooks and unsubscribe links."""

from anymail import urls as anymail_urls
from django.urls import URLPattern, include, path

from notifications.batch_admin import batch_resume
from notifications.unsubscribe import unsubscribe_view
from notifications.webhooks import requires_anymail_secret, twilio_status, whatsapp_webhook


def _guarded(pattern: URLPattern) -> URLPattern:
    return URLPattern(
        pattern.pattern,
        requires_anymail_secret(pattern.callback),
        pattern.default_args,
        pattern.name,
    )


urlpatterns = [
    # anymail's per-ESP tracking views, protected by ANYMAIL["WEBHOOK_SECRET"] (basic auth)
    # and refused while it is unset, e.g. /webhooks/anymail/postmark/tracking/.
    path(
        "webhooks/anymail/",
        include(([_guarded(p) for p in anymail_urls.urlpatterns], anymail_urls.app_name)),
    ),
    path("webhooks/twilio/status", twilio_status, name="twilio_status"),
    path("webhooks/whatsapp", whatsapp_webhook, name="whatsapp_webhook"),
    path("unsubscribe/<str:token>", unsubscribe_view, name="unsubscribe"),
    # Seed 001: "resumes with POST /admin/batch/resume?run_id=<id>" (staff, permission, CSRF).
    path("admin/batch/resume", batch_resume, name="batch_resume"),
]
