"""Admin for trigger workflows (seed 003) and the cadence simulator page. Imported from
NotificationsConfig.ready(). Actions and views are thin doors onto notifications.triggers and
notifications.cadence_checks."""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth.decorators import permission_required
from django.db.models import CharField, Count, Max, OuterRef, Subquery, Value
from django.db.models.functions import Concat
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from cadence.models import TYPE_LIMIT_FIELDS, Persona, Stakeholder, TriggerCooldown
from cadence.policy import RULE_LABELS, Rules
from cadence.validators import MAX_HOURS
from notifications.admin_confirm import confirm_page, confirmed
from notifications.cadence_checks import cadence_simulate, cadence_what_if
from notifications.cli import out_of_range
from notifications.models import Channel, MessageType
from notifications.trigger_models import TriggerEvent, TriggerSetup, TriggerWorkflow
from notifications.triggers import (
    GROUPED_VARIABLES,
    active_trigger_workflows,
    evaluate_triggers,
    registered_evaluators,
    tick_summary,
)


class TriggerSetupInline(admin.StackedInline):
    model = TriggerSetup
    can_delete = False
    min_num = 1
    max_num = 1
    filter_horizontal = ("audience_personas", "audience_stakeholders")
    fieldsets = (
        (
            "Audience",
            {
                "fields": (
                    "audience_personas",
                    "audience_stakeholders",
                    "include_project_stakeholders",
                )
            },
        ),
        (
            "Message",
            {"fields": ("channel", "fallback_channel", "message_type", "expires_after_hours")},
        ),
        ("Layer 1", {"fields": ("cooldown_hours",)}),
        (
            "Beyond the seed (off by default)",
            {"fields": ("group_contexts", "grouped_template", "send_resolved_notices")},
        ),
    )


def _event_choices():
    return [(e.name, e.label) for e in registered_evaluators()]


class TriggerEventForm(forms.ModelForm):
    event = forms.ChoiceField(choices=_event_choices)

    class Meta:
        model = TriggerEvent
        fields = (
            "event",
            "template",
            "resolved_template",
            "watched_issues",
            "cooldown_hours",
            "issue_cooldown_hours",
        )


class TriggerEventInline(admin.StackedInline):
    model = TriggerEvent
    form = TriggerEventForm
    extra = 0
    min_num = 1


@admin.register(TriggerWorkflow)
class TriggerWorkflowAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "is_active",
        "events",
        "channels",
        "audience",
        "options",
        "last_fired",
    )
    list_filter = ("is_active",)
    search_fields = ("name", "description")
    fields = ("name", "description", "is_active", "risk_level", "available_variables")
    readonly_fields = ("available_variables",)
    inlines = [TriggerSetupInline, TriggerEventInline]
    actions = ["evaluate_now"]

    def get_queryset(self, request):
        key = Concat(Value("workflow:"), OuterRef("pk"), output_field=CharField())
        last = (
            TriggerCooldown.objects.filter(workflow_key=key)
            .values("workflow_key")
            .annotate(last=Max("last_sent_at"))
            .values("last")
        )
        return (
            super()
            .get_queryset(request)
            .select_related("trigger_setup")
            .prefetch_related(
                "trigger_events",
                "trigger_setup__audience_personas",
            )
            .annotate(
                last_fired_at=Subquery(last[:1]),
                stakeholder_total=Count("trigger_setup__audience_stakeholders", distinct=True),
            )
        )

    @admin.display(description="events")
    def events(self, obj):
        return ", ".join(e.event for e in obj.trigger_events.all()) or "—"

    @admin.display(description="channel")
    def channels(self, obj):
        setup = getattr(obj, "trigger_setup", None)
        if setup is None:
            return "—"
        channel = setup.channel or "preferred"
        return f"{channel} → {setup.fallback_channel or 'own fallback'}"

    @admin.display(description="audience")
    def audience(self, obj):
        setup = getattr(obj, "trigger_setup", None)
        if setup is None:
            return "—"
        parts = [p.name for p in setup.audience_personas.all()]
        if obj.stakeholder_total:
            parts.append(f"{obj.stakeholder_total} named")
        if setup.include_project_stakeholders:
            parts.append("project stakeholders")
        return ", ".join(parts) or "nobody"

    @admin.display(description="options")
    def options(self, obj):
        setup = getattr(obj, "trigger_setup", None)
        if setup is None:
            return "—"
        on = [
            name
            for name, flag in (
                ("grouping", setup.group_contexts),
                ("resolved notices", setup.send_resolved_notices),
            )
            if flag
        ]
        return ", ".join(on) or "seed defaults"

    @admin.display(description="last fired", ordering="last_fired_at")
    def last_fired(self, obj):
        return obj.last_fired_at or "never"

    @admin.display(description="variables templates may use")
    def available_variables(self, obj):
        rows = [(e.label, e.name, ", ".join(e.template_variables)) for e in registered_evaluators()]
        table = format_html_join("", "<li><b>{}</b> ({}): {}</li>", rows)
        return format_html(
            "<ul>{}</ul><p>Grouped templates see {}; each item holds one context's variables "
            "and its event. Resolved templates see the variables of the context that "
            "cleared.</p>",
            table,
            ", ".join(GROUPED_VARIABLES),
        )

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        for problem in _setup_problems(form.instance):
            self.message_user(request, problem, messages.WARNING)

    def changelist_view(self, request, extra_context=None):
        # "Evaluate all ... now" acts on every active workflow whatever is selected: it
        # needs no selection (Django refuses an action without one, so one row stands in).
        if (
            request.method == "POST"
            and request.POST.get("action") == "evaluate_now"
            and not request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
        ):
            first = TriggerWorkflow.objects.order_by("pk").values_list("pk", flat=True)[:1]
            post = request.POST.copy()
            post.setlist(helpers.ACTION_CHECKBOX_NAME, [str(pk) for pk in first])
            request.POST = post
        return super().changelist_view(request, extra_context)

    @admin.action(description="Evaluate all trigger workflows now…", permissions=["change"])
    def evaluate_now(self, request, queryset):
        if not confirmed(request):
            workflows = active_trigger_workflows()
            return confirm_page(
                self,
                request,
                queryset,
                action="evaluate_now",
                title="Evaluate all trigger workflows now",
                summary=f"This runs at once what beat runs every five minutes, for every active "
                f"trigger workflow ({len(workflows)}), not only the selected ones: each context "
                "that fires outside its cooldown becomes deliveries, sent on the next dispatch "
                "round or queued by the stakeholders' cadence rules.",
                items=[workflow.name for workflow in workflows],
                confirm_label="Yes, evaluate now",
            )
        report = evaluate_triggers(now=timezone.now())
        self.message_user(request, tick_summary(report))


def _setup_problems(workflow) -> list[str]:
    setup = TriggerSetup.objects.filter(workflow=workflow).first()
    if setup is None:
        return ["This workflow has no trigger setup: it will not run."]
    problems = []
    if setup.group_contexts and setup.grouped_template_id is None:
        problems.append(
            "Grouping is on but there is no grouped template: contexts go out one message each."
        )
    for event in TriggerEvent.objects.filter(workflow=workflow):
        if setup.send_resolved_notices and event.resolved_template_id is None:
            problems.append(
                f"Resolved notices are on but {event.event} has no resolved template: no "
                "notice will be sent for it."
            )
    return problems


# --- the cadence simulator ---------------------------------------------------------------------


class SimulateForm(forms.Form):
    stakeholder = forms.ModelChoiceField(Stakeholder.objects.select_related("persona"))
    channel = forms.ChoiceField(choices=Channel.choices, initial=Channel.EMAIL)
    message_type = forms.ChoiceField(choices=MessageType.choices, initial=MessageType.ALERT)
    at = forms.DateTimeField(
        required=False,
        help_text="Blank: now. Read in the server's time zone.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )

    def clean_at(self):
        at = self.cleaned_data["at"]
        if at and (problem := out_of_range(at)):
            raise forms.ValidationError(f"The time {problem}.")
        return at


class WhatIfForm(forms.Form):
    persona = forms.ModelChoiceField(Persona.objects.all())
    cooldown_hours = forms.FloatField(required=False, min_value=0, max_value=MAX_HOURS)
    max_per_day = forms.IntegerField(required=False, min_value=0)
    max_per_week = forms.IntegerField(required=False, min_value=0)
    max_per_month = forms.IntegerField(required=False, min_value=0)
    max_report_per_day = forms.IntegerField(required=False, min_value=0)
    max_alert_per_day = forms.IntegerField(required=False, min_value=0)
    max_story_so_far_per_day = forms.IntegerField(required=False, min_value=0)
    max_custom_per_day = forms.IntegerField(required=False, min_value=0)

    def changed_rules(self) -> Rules:
        """The persona's rules with the fields filled in here changed."""
        persona = self.cleaned_data["persona"]
        current = persona.rules()

        def pick(name, default):
            value = self.cleaned_data.get(name)
            return default if value is None else value

        return Rules(
            cooldown_hours=pick("cooldown_hours", current.cooldown_hours),
            max_per_day=pick("max_per_day", current.max_per_day),
            max_per_week=pick("max_per_week", current.max_per_week),
            max_per_month=pick("max_per_month", current.max_per_month),
            type_limits={t: pick(name, current.type_limits[t]) for name, t in TYPE_LIMIT_FIELDS},
        )


@permission_required(("cadence.view_stakeholder", "cadence.view_persona"), raise_exception=True)
def cadence_simulator(request):
    """GET /admin/cadence/simulator/ (staff who may view stakeholders and personas; wrapped
    by admin_view in config.urls).

    ?stakeholder=…&channel=…&message_type=…&at=… → Layer 2's decision and blocking rule.
    ?persona=…&<changed cadence fields> → the last 7 days replayed under the changed rules.
    """
    now = timezone.now()
    simulation = what_if = None
    simulate_form = SimulateForm(
        request.GET if "stakeholder" in request.GET else None,
        initial={"channel": Channel.EMAIL, "message_type": MessageType.ALERT},
    )
    if simulate_form.is_bound and simulate_form.is_valid():
        data = simulate_form.cleaned_data
        simulation = cadence_simulate(
            stakeholder=data["stakeholder"],
            channel=data["channel"],
            message_type=data["message_type"],
            at=data["at"] or now,
        )
    what_if_form = WhatIfForm(request.GET if "persona" in request.GET else None)
    if what_if_form.is_bound and what_if_form.is_valid():
        what_if = cadence_what_if(
            persona=what_if_form.cleaned_data["persona"],
            rules=what_if_form.changed_rules(),
            now=now,
        )
    context = {
        **admin.site.each_context(request),
        "title": "Cadence simulator",
        "simulate_form": simulate_form,
        "what_if_form": what_if_form,
        "simulation": simulation,
        "what_if": what_if,
        "rule_labels": RULE_LABELS,
        "now": now,
    }
    return TemplateResponse(request, "cadence/simulator.html", context)
