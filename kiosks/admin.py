"""Admin for projects, kiosks (with health badges), heartbeats and morale responses. The
heartbeat dashboard is linked from the kiosk list."""

from django.contrib import admin
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from kiosks import health
from kiosks.dashboard import age
from kiosks.models import Heartbeat, Kiosk, MoraleResponse, Project, new_kiosk_token

BADGE = (
    '<span style="background:{};color:#fff;padding:1px 7px;border-radius:9px;'
    'font-size:11px;white-space:nowrap;margin-right:3px">{}</span>'
)


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ("name", "kiosk_count", "unhealthy_count", "stakeholder_count")
    search_fields = ("name", "stakeholders__name")
    filter_horizontal = ("stakeholders",)

    def get_queryset(self, request):
        now = timezone.now()
        return (
            super()
            .get_queryset(request)
            .annotate(
                kiosk_total=Count("kiosks", filter=Q(kiosks__is_active=True), distinct=True),
                unhealthy_total=Count(
                    "kiosks",
                    filter=Q(kiosks__is_active=True) & health.unhealthy_filter(now, "kiosks__"),
                    distinct=True,
                ),
                stakeholder_total=Count("stakeholders", distinct=True),
            )
        )

    @admin.display(description="kiosks", ordering="kiosk_total")
    def kiosk_count(self, obj):
        return obj.kiosk_total

    @admin.display(description="with issues", ordering="unhealthy_total")
    def unhealthy_count(self, obj):
        return obj.unhealthy_total

    @admin.display(description="stakeholders", ordering="stakeholder_total")
    def stakeholder_count(self, obj):
        return obj.stakeholder_total


class HealthFilter(admin.SimpleListFilter):
    title = "health"
    parameter_name = "health"

    def lookups(self, request, model_admin):
        return [("healthy", "healthy"), ("issues", "with issues"), ("offline", "offline")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "healthy":
            return queryset.exclude(health.unhealthy_filter(now))
        if self.value() == "issues":
            return queryset.filter(health.unhealthy_filter(now))
        if self.value() == "offline":
            return queryset.filter(health.offline_filter(now))
        return queryset


@admin.register(Kiosk)
class KioskAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "project",
        "health_badges",
        "battery",
        "heartbeat_age",
        "mode",
        "is_active",
    )
    list_filter = (HealthFilter, "project", "is_active", "charging", "connection_status")
    search_fields = ("name", "project__name")
    list_select_related = ("project",)
    # The last reported state is what the heartbeats said: read-only here (a hand edit would
    # fake an alert or hide one). Heartbeats come from the kiosk (POST .../heartbeat).
    readonly_fields = (
        "health_badges",
        "charging",
        "screen_state",
        "battery_level",
        "connection_status",
        "mode",
        "last_heartbeat_at",
        "token",
    )
    fieldsets = (
        (None, {"fields": ("project", "name", "is_active", "health_badges")}),
        (
            "Last reported state",
            {
                "fields": (
                    "charging",
                    "screen_state",
                    "battery_level",
                    "connection_status",
                    "mode",
                    "last_heartbeat_at",
                )
            },
        ),
        (
            "Heartbeat",
            {
                "description": "The kiosk POSTs JSON to /kiosks/&lt;id&gt;/heartbeat with this "
                "token in the X-Kiosk-Token header.",
                "fields": ("token",),
            },
        ),
    )
    actions = ["new_token"]

    def get_fieldsets(self, request, obj=None):
        """The token only for staff who may change kiosks: with it, anyone can report as
        the kiosk (and keep one that went dark from raising its alert)."""
        fieldsets = super().get_fieldsets(request, obj)
        if self.has_change_permission(request, obj):
            return fieldsets
        return [
            (name, {**options, "fields": [f for f in options["fields"] if f != "token"]})
            for name, options in fieldsets
            if name != "Heartbeat"
        ]

    @admin.display(description="health")
    def health_badges(self, obj):
        if obj is None or obj.pk is None:
            return "—"
        issues = health.issues_of(obj, now=timezone.now())
        if not issues:
            return format_html(BADGE, "#059669", "healthy")
        return format_html_join(
            "",
            BADGE,
            (("#dc2626" if i == health.OFFLINE else "#d97706", i) for i in issues),
        )

    @admin.display(description="battery", ordering="battery_level")
    def battery(self, obj):
        return "—" if obj.battery_level is None else f"{obj.battery_level}%"

    @admin.display(description="last heartbeat", ordering="last_heartbeat_at")
    def heartbeat_age(self, obj):
        return age(obj.last_heartbeat_at, now=timezone.now())

    @admin.action(
        description="Issue a new heartbeat token (the old one stops working)",
        permissions=["change"],
    )
    def new_token(self, request, queryset):
        count = 0
        for kiosk in queryset:
            Kiosk.objects.filter(pk=kiosk.pk).update(token=new_kiosk_token())
            count += 1
        self.message_user(request, f"{count} kiosks have a new token.")


@admin.register(Heartbeat)
class HeartbeatAdmin(admin.ModelAdmin):
    list_display = (
        "received_at",
        "kiosk",
        "charging",
        "screen_state",
        "battery_level",
        "connection_status",
        "mode",
    )
    list_filter = ("kiosk__project", "charging", "screen_state", "connection_status")
    search_fields = ("kiosk__name", "kiosk__project__name")
    date_hierarchy = "received_at"
    list_select_related = ("kiosk__project",)
    readonly_fields = [f.name for f in Heartbeat._meta.fields if f.name != "id"]

    def has_add_permission(self, request):
        return False


@admin.register(MoraleResponse)
class MoraleResponseAdmin(admin.ModelAdmin):
    list_display = ("submitted_at", "project", "kiosk", "score")
    list_filter = ("project", "score")
    search_fields = ("project__name", "kiosk__name")
    date_hierarchy = "submitted_at"
    list_select_related = ("project", "kiosk")
    readonly_fields = ("project", "kiosk", "score", "submitted_at")

    def has_add_permission(self, request):
        return False  # answers are entered on the kiosks, not typed in here
