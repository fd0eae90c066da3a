"""The partner portal's public URLs, mounted under /partners/ by config/urls.py."""

from django.urls import path

from production_runs.views import partner_run, wa_auth

urlpatterns = [
    path("wa-auth", wa_auth, name="partner_wa_auth"),
    path("runs/<int:run_id>", partner_run, name="partner_run"),
]
