from django.contrib import admin
from django.urls import include, path

from config.views import healthz

admin.site.site_header = "Herald"
admin.site.site_title = "Herald"
admin.site.index_title = "Operations"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("", include("notifications.urls")),
    path("admin/", admin.site.urls),
]
