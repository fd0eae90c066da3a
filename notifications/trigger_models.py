"""Models of trigger-type workflows (seed 003). Imported at the bottom of notifications.models.

A trigger workflow is a Workflow of type "trigger" with one TriggerSetup (who hears, on
which channel, which options) and one TriggerEvent per trigger event it listens to (the
template, and the Layer 1 cooldowns of that event and of its issues).
"""

from django.core.exceptions import ValidationError
from django.db import models

from cadence.models import Persona, Stakeholder
from cadence.validators import MAX_HOURS, validate_hours
from notifications.models import Channel, MessageTemplate, MessageType, Workflow

__all__ = ["TriggerEvent", "TriggerSetup", "TriggerWorkflow"]


def _positive_hours(value):
    """Migrations up to 0015 name this validator; the fields now use validate_hours."""
    validate_hours(value)


# Templates staff may pick: not the records batch launches leave (MessageTemplate.batch_run).
PICKABLE = {"batch_run__isnull": True}


class TriggerWorkflowManager(models.Manager):
    def get_queryset(self):
        return super().get_queryset().filter(type=Workflow.Type.TRIGGER)


class TriggerWorkflow(Workflow):
    """The trigger-type workflows, for their own admin page."""

    objects = TriggerWorkflowManager()

    class Meta:
        proxy = True
        verbose_name = "trigger workflow"

    def __init__(self, *args, **kwargs):
        if not args:  # a new one (rows loaded from the database come positionally)
            kwargs.setdefault("type", Workflow.Type.TRIGGER)  # before clean() checks its risk
        super().__init__(*args, **kwargs)

    def save(self, *args, **kwargs):
        self.type = Workflow.Type.TRIGGER
        super().save(*args, **kwargs)


class TriggerSetup(models.Model):
    """Who hears about a trigger workflow's events, how, and which options are on."""

    workflow = models.OneToOneField(
        Workflow,
        on_delete=models.CASCADE,
        related_name="trigger_setup",
        help_text="The trigger workflow this setup belongs to.",
    )
    channel = models.CharField(
        max_length=20,
        choices=Channel.choices,
        blank=True,
        default=Channel.EMAIL,
        help_text="Blank: each stakeholder's preferred channel.",
    )
    fallback_channel = models.CharField(
        max_length=20,
        choices=Channel.choices,
        blank=True,
        help_text="Where a message goes when cadence or an outage holds the channel "
        "(email → SMS). Blank: each stakeholder's own fallback channel.",
    )
    message_type = models.CharField(
        max_length=20,
        choices=MessageType.choices,
        default=MessageType.ALERT,
        help_text="Counts against the per-type daily limit of the recipients' cadence.",
    )
    audience_personas = models.ManyToManyField(
        Persona, blank=True, related_name="+", help_text="Every active stakeholder of these."
    )
    audience_stakeholders = models.ManyToManyField(
        Stakeholder,
        blank=True,
        related_name="+",
        help_text=(
            "Named stakeholders who hear about every event of the workflow, whatever their persona."
        ),
    )
    include_project_stakeholders = models.BooleanField(
        default=True,
        help_text="Project-driven recipients: also the stakeholders assigned to the project "
        "the event is about (e.g. the kiosk's project).",
    )
    cooldown_hours = models.FloatField(
        null=True,
        blank=True,
        validators=[validate_hours],
        help_text="Layer 1: least time between two fires of one context. Blank: the "
        "shortest non-zero cooldown of the audience's personas (a stakeholder's own override "
        "not counted), else TRIGGER_DEFAULT_COOLDOWN_HOURS (1 h by default).",
    )
    group_contexts = models.BooleanField(
        default=False,
        help_text="Grouping: the contexts one stakeholder hears about in one evaluation "
        "become one message listing them (needs the grouped template).",
    )
    grouped_template = models.ForeignKey(
        MessageTemplate,
        on_delete=models.PROTECT,
        limit_choices_to=PICKABLE,
        null=True,
        blank=True,
        related_name="+",
        help_text="Grouping: several contexts in one message. Sees count, summaries and items "
        "(each item: one context's variables and its event).",
    )
    send_resolved_notices = models.BooleanField(
        default=False,
        help_text="When a context people were told about clears, tell them once that it is "
        "resolved (needs a resolved template).",
    )
    expires_after_hours = models.FloatField(
        null=True,
        blank=True,
        validators=[validate_hours],
        help_text="A message cadence holds longer than this is cancelled as expired "
        "instead of sent late. Blank: never.",
    )

    class Meta:
        verbose_name = "trigger setup"

    def __str__(self):
        return f"setup of {self.workflow}"

    def clean(self):
        from notifications.triggers import GROUPED_VARIABLES

        problems = {}
        if self.channel and self.fallback_channel == self.channel:
            problems["fallback_channel"] = "The fallback must differ from the channel."
        if self.expires_after_hours is not None and self.expires_after_hours <= 0:
            problems["expires_after_hours"] = (
                "More than 0 hours: a message that expires as it is made is never sent. "
                "Blank: messages never expire."
            )
        if self.channel == Channel.WHATSAPP and self.workflow_id:
            events = TriggerEvent.objects.filter(workflow_id=self.workflow_id)
            templates = [t for e in events for t in (e.template, e.resolved_template)]
            if problem := _not_carried([*templates, self.grouped_template], self.channel):
                problems["channel"] = problem
        try:
            _check_template_variables(
                self, ["grouped_template"], GROUPED_VARIABLES, "a grouped message"
            )
        except ValidationError as error:
            error.update_error_dict(problems)
        if problems:
            raise ValidationError(problems)


def _not_carried(templates, channel: str) -> str:
    """Why some of the templates cannot go on `channel` ("" if all of them can)."""
    names = sorted({t.name for t in templates if t is not None and not t.carries(channel)})
    if not names:
        return ""
    return (
        f"WhatsApp sends approved templates only: {', '.join(names)} "
        f"{'have' if len(names) > 1 else 'has'} no WhatsApp template name. Choose another "
        "channel, or give the template its WhatsApp template name."
    )


def _check_template_variables(record, fields, available, what: str) -> None:
    """Refuse templates (in `fields` of `record`) declaring variables `what` does not give:
    they would render empty in every message. Every such field is named at once."""
    problems = {}
    for field in fields:
        template_id = getattr(record, f"{field}_id")
        template = MessageTemplate.objects.filter(id=template_id).first() if template_id else None
        declared = template.variables if template and isinstance(template.variables, list) else []
        missing = sorted(set(declared) - set(available))
        if missing:
            many = len(missing) > 1
            problems[field] = (
                f"The template {template.name} uses {', '.join(missing)}, which {what} does "
                f"not give ({'they' if many else 'it'} would be empty in every message). "
                f"Available: {', '.join(available)}."
            )
    if problems:
        raise ValidationError(problems)


class TriggerEvent(models.Model):
    """One trigger event a workflow listens to (kiosk_offline, kiosk_health_status, ...)."""

    workflow = models.ForeignKey(
        Workflow,
        on_delete=models.CASCADE,
        related_name="trigger_events",
        help_text="The trigger workflow listening to this event.",
    )
    event = models.CharField(max_length=80, help_text="A registered trigger event.")
    template = models.ForeignKey(
        MessageTemplate,
        on_delete=models.PROTECT,
        limit_choices_to=PICKABLE,
        related_name="+",
        help_text="One context.",
    )
    resolved_template = models.ForeignKey(
        MessageTemplate,
        on_delete=models.PROTECT,
        limit_choices_to=PICKABLE,
        null=True,
        blank=True,
        related_name="+",
        help_text="Resolved notices: sees the same variables as the template.",
    )
    watched_issues = models.JSONField(
        default=list,
        blank=True,
        help_text='Only contexts with at least one of these issues fire, e.g. ["NOT_CHARGING", '
        '"LOW_BATTERY"] when kiosk_offline already covers OFFLINE. Blank: every context.',
    )
    cooldown_hours = models.FloatField(
        null=True,
        blank=True,
        validators=[validate_hours],
        help_text="Layer 1 cooldown of this event. Blank: the workflow's.",
    )
    issue_cooldown_hours = models.JSONField(
        default=dict,
        blank=True,
        help_text='Per-issue Layer 1 cooldowns, e.g. {"OFFLINE": 0.25, "LOW_BATTERY": 4}. '
        "A context with several issues uses the shortest of theirs.",
    )

    class Meta:
        ordering = ["workflow", "event"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "event"], name="trigger_event_once")
        ]

    def __str__(self):
        return f"{self.event} → {self.template}"

    def clean(self):
        from notifications.triggers import evaluator_for

        evaluator = evaluator_for(self.event)
        if evaluator is None:
            raise ValidationError({"event": f"No trigger event is registered as {self.event!r}."})
        problems = {}
        try:
            _check_template_variables(
                self, ["template", "resolved_template"], evaluator.template_variables, self.event
            )
        except ValidationError as error:
            error.update_error_dict(problems)
        problems.update(self._issue_problems(evaluator.issues))
        setup = TriggerSetup.objects.filter(workflow_id=self.workflow_id).first()
        if setup is not None and setup.channel == Channel.WHATSAPP:
            for field in ("template", "resolved_template"):
                chosen = getattr(self, field) if getattr(self, f"{field}_id") else None
                if problem := _not_carried([chosen], setup.channel):
                    problems.setdefault(field, problem)
        if problems:
            raise ValidationError(problems)

    def _issue_problems(self, issues) -> dict[str, str]:
        """What is wrong with the per-issue cooldowns and the watched issues, by field."""
        problems = {}
        known = f"the issues are {', '.join(issues)}" if issues else "this event has no issues"

        def unknown_issues(names) -> str:
            return f"Unknown issue{'s' if len(names) > 1 else ''} {', '.join(names)}: {known}."

        hours = self.issue_cooldown_hours
        if not isinstance(hours, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= MAX_HOURS
            for v in hours.values()
        ):
            problems["issue_cooldown_hours"] = (
                f'Give {{"ISSUE": hours, ...}} with hours from 0 to {MAX_HOURS:,} (a year).'
            )
        elif unknown := sorted(set(hours) - set(issues)):
            problems["issue_cooldown_hours"] = unknown_issues(unknown)
        watched = self.watched_issues
        if not isinstance(watched, list) or not all(isinstance(i, str) for i in watched):
            problems["watched_issues"] = 'Give a list, e.g. ["LOW_BATTERY"].'
        elif unknown := sorted(set(watched) - set(issues)):
            problems["watched_issues"] = unknown_issues(unknown)
        return problems

    def watches(self, issues) -> bool:
        return not self.watched_issues or bool(set(self.watched_issues) & set(issues))
