"""Public URLs of the delivery engine: provider webhooks and unsubscribe links."""

from django.urls import include, path

from notifications.unsubscribe import unsubscribe_view
from notifications.views import batch_resume
from notifications.webhooks import twilio_status, whatsapp_webhook

urlpatterns = [
    # anymail's per-ESP tracking views, protected by ANYMAIL["WEBHOOK_SECRET"] (basic auth),
    # e.g. /webhooks/anymail/postmark/tracking/.
    path("webhooks/anymail/", include("anymail.urls")),
    path("webhooks/twilio/status", twilio_status, name="twilio_status"),
    path("webhooks/whatsapp", whatsapp_webhook, name="whatsapp_webhook"),
    path("unsubscribe/<str:token>", unsubscribe_view, name="unsubscribe"),
    # Seed 001: "resumes with POST /admin/batch/resume?run_id=<id>" (staff, permission, CSRF).
    path("admin/batch/resume", batch_resume, name="batch_resume"),
]
