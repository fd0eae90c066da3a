"""Admin for personas (their cadence), stakeholders (with overrides that are enforced) and
Layer 1 trigger cooldowns. The cadence simulator is linked from the persona and stakeholder
lists (its view lives with the engine, which owns the delivery history)."""

from django.contrib import admin
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.db.models import Count, Q
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html

from cadence.models import CADENCE_FIELDS, Persona, Stakeholder, TriggerCooldown
from cadence.policy import DEFAULT_RULES
from cadence.signals import tell_cadence_changed

# What decides a stakeholder's cadence besides the persona's own fields: saving a change
# of any of them re-plans what is queued for them.
STAKEHOLDER_CADENCE_FIELDS = (*CADENCE_FIELDS, "persona", "time_zone")


def _simulator_link(query: str, label: str):
    try:
        url = reverse("cadence_simulator")
    except NoReverseMatch:  # the engine's view is not installed
        return "—"
    return format_html('<a href="{}?{}">{}</a>', url, query, label)


def _cap(value: int) -> str:
    return str(value) if value else "∞"


def _replan(modeladmin, request, sender, stakeholder_ids, why: str) -> None:
    """Have the engine re-plan what the old cadence queued for these people, and say how
    many deliveries moved."""
    count = tell_cadence_changed(
        sender,
        stakeholder_ids=stakeholder_ids,
        now=timezone.now(),
        why=f"{why} by {request.user.get_username()}",
    )
    if count is None:  # the engine is not installed
        return
    if count == 0:
        text = "No delivery queued under the old cadence could go sooner under the new one."
    elif count == 1:
        text = "1 delivery queued under the old cadence was re-planned by the new one."
    else:
        text = f"{count} deliveries queued under the old cadence were re-planned by the new one."
    modeladmin.message_user(request, text)


def _left_without_persona(personas) -> dict:
    """What deleting these personas does to the people who have them (the delete pages list
    only what is deleted): they stay, without a persona, on the seed's defaults."""
    people = Stakeholder.objects.filter(persona__in=personas).order_by("name")
    count = people.count()
    names = list(people.values_list("name", flat=True)[:10])
    return {
        "count": count,
        "names": names,
        "more": count - len(names),
        "one_persona": len(personas) == 1,
        "defaults": DEFAULT_RULES.describe(),
    }


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "cooldown",
        "per_day",
        "per_week",
        "per_month",
        "type_limits",
        "stakeholder_count",
        "what_if",
    )
    search_fields = ("name", "description")
    fieldsets = (
        (None, {"fields": ("name", "description")}),
        (
            "Cadence",
            {
                "description": "Limits per person with this persona, on each channel. "
                "Days, weeks (from Monday) and months are counted in the person's time zone. "
                "The seed's defaults: 1 h cooldown, 1/day, 2/week, unlimited/month. "
                "Saving a looser cadence brings forward what the old one queued.",
                "fields": ("cooldown_hours", "max_per_day", "max_per_week", "max_per_month"),
            },
        ),
        (
            "Per message type, per day",
            {
                "fields": (
                    "max_report_per_day",
                    "max_alert_per_day",
                    "max_story_so_far_per_day",
                    "max_custom_per_day",
                )
            },
        ),
    )

    actions = ["delete_selected"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(stakeholder_total=Count("stakeholders"))

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and set(form.changed_data) & set(CADENCE_FIELDS):
            people = obj.stakeholders.values_list("pk", flat=True)
            _replan(self, request, Persona, people, f"persona {obj}'s cadence was changed")

    def delete_model(self, request, obj):
        self.delete_queryset(request, Persona.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        """Their stakeholders are left on the seed's defaults: what those queued under the
        persona's cadence is re-planned by them."""
        personas = list(queryset)
        people = list(Stakeholder.objects.filter(persona__in=personas).values_list("pk", flat=True))
        super().delete_queryset(request, queryset)
        if people:
            what = "persona" if len(personas) == 1 else "personas"
            names = ", ".join(str(p) for p in personas)
            _replan(self, request, Persona, people, f"{what} {names} deleted")

    def render_delete_form(self, request, context):
        context["left_without_persona"] = _left_without_persona([context["object"]])
        return super().render_delete_form(request, context)

    @admin.action(
        description="Delete selected personas (their stakeholders keep the seed's defaults)",
        permissions=["delete"],
    )
    def delete_selected(self, request, queryset):
        response = django_delete_selected(self, request, queryset)
        if isinstance(response, TemplateResponse):  # the confirmation, not the deletion
            response.context_data["left_without_persona"] = _left_without_persona(queryset)
        return response

    @admin.display(description="cooldown", ordering="cooldown_hours")
    def cooldown(self, obj):
        return f"{obj.cooldown_hours:g} h"

    @admin.display(description="day", ordering="max_per_day")
    def per_day(self, obj):
        return _cap(obj.max_per_day)

    @admin.display(description="week", ordering="max_per_week")
    def per_week(self, obj):
        return _cap(obj.max_per_week)

    @admin.display(description="month", ordering="max_per_month")
    def per_month(self, obj):
        return _cap(obj.max_per_month)

    @admin.display(description="per type / day")
    def type_limits(self, obj):
        return ", ".join(f"{t} {_cap(n)}" for t, n in obj.rules().type_limits.items())

    @admin.display(description="stakeholders", ordering="stakeholder_total")
    def stakeholder_count(self, obj):
        return obj.stakeholder_total

    @admin.display(description="what if")
    def what_if(self, obj):
        return _simulator_link(f"persona={obj.pk}#what-if", "replay last 7 days")


class OverrideFilter(admin.SimpleListFilter):
    title = "cadence"
    parameter_name = "overrides"

    def lookups(self, request, model_admin):
        return [("yes", "overrides the persona"), ("no", "persona's cadence")]

    def queryset(self, request, queryset):
        overridden = Q()
        for name in CADENCE_FIELDS:
            overridden |= Q(**{f"{name}__isnull": False})
        if self.value() == "yes":
            return queryset.filter(overridden)
        if self.value() == "no":
            return queryset.exclude(overridden)
        return queryset


@admin.register(Stakeholder)
class StakeholderAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "email",
        "phone",
        "persona",
        "preferred_channel",
        "fallback_channel",
        "time_zone",
        "override_summary",
        "is_active",
        "simulate",
    )
    list_filter = (
        "persona",
        OverrideFilter,
        "preferred_channel",
        "fallback_channel",
        "is_active",
        "projects",
        "time_zone",
    )
    search_fields = ("name", "email", "phone", "persona__name", "projects__name")
    list_select_related = ("persona",)
    readonly_fields = ("effective_rules",)
    fieldsets = (
        (None, {"fields": ("name", "email", "phone", "is_active")}),
        (
            "How to reach them",
            {"fields": ("persona", "preferred_channel", "fallback_channel", "time_zone")},
        ),
        (
            "Cadence overrides",
            {
                "description": "Leave blank to inherit the persona's value. A filled value "
                "applies to this person only, and is enforced when deliveries are scheduled "
                "and again when they are sent. Saving a looser cadence brings forward what "
                "the old one queued.",
                "fields": (*CADENCE_FIELDS, "effective_rules"),
            },
        ),
    )

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and set(form.changed_data) & set(STAKEHOLDER_CADENCE_FIELDS):
            _replan(self, request, Stakeholder, [obj.pk], f"{obj}'s cadence was changed")

    @admin.display(description="overrides")
    def override_summary(self, obj):
        overrides = obj.overrides()
        if not overrides:
            return "—"
        return ", ".join(f"{name.replace('_', ' ')} {value:g}" for name, value in overrides.items())

    @admin.display(description="effective cadence")
    def effective_rules(self, obj):
        if obj is None or obj.pk is None:
            return DEFAULT_RULES.describe()
        return obj.rules().describe()

    @admin.display(description="simulate")
    def simulate(self, obj):
        return _simulator_link(f"stakeholder={obj.pk}", "simulate")


@admin.register(TriggerCooldown)
class TriggerCooldownAdmin(admin.ModelAdmin):
    """Layer 1: when each trigger workflow last fired each context."""

    list_display = (
        "context_key",
        "workflow_key",
        "event",
        "last_sent_at",
        "fire_count",
        "opened_at",
        "cleared_at",
    )
    list_filter = ("event", "workflow_key", ("cleared_at", admin.EmptyFieldListFilter))
    search_fields = ("context_key",)
    date_hierarchy = "last_sent_at"
    readonly_fields = (
        "workflow_key",
        "context_key",
        "event",
        "last_sent_at",
        "opened_at",
        "cleared_at",
        "fire_count",
    )
    actions = ["reset_cooldown"]

    def has_add_permission(self, request):
        return False

    @admin.action(
        description="Reset the cooldown (the context may fire on the next tick)",
        permissions=["delete"],
    )
    def reset_cooldown(self, request, queryset):
        count, _ = queryset.delete()
        self.message_user(request, f"{count} cooldowns reset.")
