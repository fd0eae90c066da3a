from django.contrib import admin
from django.urls import include, path

from config.views import healthz, permission_denied
from kiosks import views as kiosk_views
from notifications.trigger_admin import cadence_simulator

admin.site.site_header = "Herald"
admin.site.site_title = "Herald"
admin.site.index_title = "Operations"
handler403 = permission_denied

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("", include("notifications.urls")),
    path("partners/", include("production_runs.urls")),
    # Seed 003: kiosk heartbeats, the cadence simulator and the heartbeat dashboard (before
    # the admin's own URLs, which would otherwise claim the admin/ paths).
    path("kiosks/<int:kiosk_id>/heartbeat", kiosk_views.heartbeat, name="kiosk_heartbeat"),
    path(
        "admin/cadence/simulator/",
        admin.site.admin_view(cadence_simulator),
        name="cadence_simulator",
    ),
    path(
        "admin/kiosks/dashboard/",
        admin.site.admin_view(kiosk_views.heartbeat_dashboard),
        name="kiosks_dashboard",
    ),
    path("admin/", admin.site.urls),
]
