"""Production runs and what their reminders need: partners on WhatsApp platforms (WABAs),
designs, runs and their progress, the reminder settings ops tune in the admin, the
escalation state of each stalled run, the event → template map of the dispatcher and the
approval status of each WhatsApp template variant per platform.

Models hold data and single-row rules; the work is done in discoverer.py, dispatcher.py,
whatsapp_templates.py and activation.py."""

import re
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from cadence.validators import (  # validate_e164: migration 0001 names it here
    MAX_HOURS,  # a year
    validate_e164,
)

# Upper bounds of the reminder settings. Longer means "never" in practice, and
# idle_hours=100000000 overflowed the date arithmetic of the run list, the dry run and the
# discoverer ("date value out of range").
MAX_DAYS = 365
# Reminders about a run use a new dedup context each day: a longer window dedups nothing more.
MAX_DEDUP_MINUTES = 24 * 60
# How far ahead of the server's clock a progress update may be stamped (a partner's phone).
CLOCK_SKEW = timedelta(minutes=5)


class Language(models.TextChoices):
    EN = "en", "English"
    HI = "hi", "Hindi"


def parse_country_codes(value: str) -> list[str]:
    return [code.strip() for code in value.split(",") if code.strip()]


class WhatsAppPlatform(models.Model):
    """One WhatsApp Business Account (WABA) and the number Herald sends from. Its access
    token comes from the environment (WHATSAPP_PLATFORM_TOKENS), never the database."""

    label = models.CharField(
        max_length=40,
        unique=True,
        help_text='Short name, e.g. "IN" or "AU"; WHATSAPP_PLATFORM_TOKENS and '
        "WHATSAPP_PLATFORM_LANGUAGES refer to it.",
    )
    waba_id = models.CharField(
        "WABA id",
        max_length=64,
        unique=True,
        help_text="The WhatsApp Business Account id at Meta; templates are submitted to it.",
    )
    phone_number_id = models.CharField(
        max_length=64, unique=True, help_text="The Cloud API phone-number id messages go out from."
    )
    country_codes = models.CharField(
        max_length=200,
        blank=True,
        help_text='Comma-separated calling codes it serves, e.g. "+91". A platform serving '
        "+91 gets English and Hindi template variants, others English only.",
    )
    is_active = models.BooleanField(
        default=True, help_text="Inactive platforms are left out of template sync and the gate."
    )

    class Meta:
        ordering = ["label"]
        verbose_name = "WhatsApp platform"
        permissions = [
            ("submit_whatsapp_templates", "Can submit WhatsApp templates to Meta and refresh them")
        ]

    def __str__(self):
        return f"{self.label} (WABA {self.waba_id})"

    @property
    def country_code_list(self) -> list[str]:
        return parse_country_codes(self.country_codes)

    def clean(self):
        for code in self.country_code_list:
            if not (code.startswith("+") and code[1:].isascii() and code[1:].isdigit()):
                raise ValidationError({"country_codes": f"{code!r} is not like +91."})


class Partner(models.Model):
    name = models.CharField(
        max_length=200,
        help_text="The production partner; {{ partner_name }} in reminder templates.",
    )
    whatsapp_number = models.CharField(
        max_length=20, blank=True, validators=[validate_e164], help_text="E.164, e.g. +919876543210"
    )
    language = models.CharField(
        "saved conversation language",
        max_length=8,
        choices=Language.choices,
        blank=True,
        help_text="The language the partner chose; empty: decided from the phone prefix.",
    )
    platform = models.ForeignKey(
        WhatsAppPlatform,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="partners",
        help_text="The WABA this partner is messaged from.",
    )
    created_at = models.DateTimeField(default=timezone.now, help_text="When the partner was added.")

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Design(models.Model):
    name = models.CharField(
        max_length=200, help_text="The design produced; {{ design_name }} in reminder templates."
    )
    image_url = models.URLField(
        "image",
        max_length=500,
        blank=True,
        help_text="Public HTTPS link to the design image (WhatsApp fetches it).",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class RunStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SENT_TO_PARTNER = "sent_to_partner", "Sent to partner"
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"


# Runs the discoverer looks at (seed 002: status IN ('sent_to_partner', 'in_progress')).
ACTIVE_STATUSES = (RunStatus.SENT_TO_PARTNER, RunStatus.IN_PROGRESS)


class ReminderKind(models.TextChoices):
    ASSIGNMENT_PENDING = "assignment_pending", "Assignment pending"
    NOT_STARTED = "not_started", "Not started"
    IDLE = "idle", "Idle"


class ProductionRun(models.Model):
    reference = models.CharField(
        max_length=60,
        unique=True,
        null=True,
        blank=True,
        help_text="External reference (ERP run number), if any.",
    )
    partner = models.ForeignKey(
        Partner,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="runs",
        help_text="Who produces it; a run without a partner is never reminded.",
    )
    design = models.ForeignKey(
        Design,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="runs",
        help_text="What is produced (its image can follow a reminder).",
    )
    status = models.CharField(
        max_length=20,
        choices=RunStatus.choices,
        default=RunStatus.DRAFT,
        help_text=(
            "draft, sent to partner (assignment pending until accepted, "
            "then not started until started), in progress (idle without "
            "progress updates), completed or cancelled. Only "
            "sent-to-partner and in-progress runs are reminded."
        ),
    )
    quantity = models.PositiveIntegerField(default=0, help_text="Pieces ordered.")
    produced_quantity = models.PositiveIntegerField(
        default=0, help_text="Pieces made so far, from the latest progress update."
    )
    created_at = models.DateTimeField(default=timezone.now, help_text="When it was assigned.")
    accepted_at = models.DateTimeField(
        null=True, blank=True, help_text="When the partner accepted it (ends assignment pending)."
    )
    started_at = models.DateTimeField(
        null=True, blank=True, help_text="When production started (ends not started)."
    )
    finished_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was completed or cancelled."
    )
    updated_at = models.DateTimeField(default=timezone.now, help_text="Last change of the run.")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # discoverer: WHERE status IN (...) AND id > last ORDER BY id (keyset pages)
            models.Index(fields=["status", "id"], name="run_status_id"),
        ]

    def __str__(self):
        return f"Run {self.pk}"

    def clean(self):
        if self.quantity < self.produced_quantity:
            raise ValidationError(
                {
                    "quantity": f"{self.produced_quantity} pieces are already produced: the "
                    f"ordered quantity cannot be less ({self.quantity} given)."
                }
            )


class ProgressUpdate(models.Model):
    run = models.ForeignKey(
        ProductionRun,
        on_delete=models.CASCADE,
        related_name="progress_updates",
        help_text="The run that moved.",
    )
    produced_quantity = models.PositiveIntegerField(
        help_text="Pieces made as of this update.",
    )
    at = models.DateTimeField(
        default=timezone.now,
        help_text="When it was reported; the idle bucket counts from the latest update.",
    )

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            # idle detection: the latest update of a run (WHERE run_id = ... ORDER BY at DESC)
            models.Index(fields=["run", "at"], name="progress_run_at"),
        ]

    def __str__(self):
        return f"{self.produced_quantity} at {self.at:%Y-%m-%d %H:%M}"

    def clean(self):
        """An update from the future would count as the run's latest progress and silence
        its idle reminders until then; more pieces than ordered is a typo (seed 002 knows
        progress only as "{{4}} of {{5}} pieces produced", never beyond the order)."""
        errors = {}
        if self.at is not None and self.at > timezone.now() + CLOCK_SKEW:
            at = timezone.localtime(self.at)
            errors["at"] = (
                f"{at:%Y-%m-%d %H:%M} is in the future: give the time the pieces were counted "
                f"(at most {CLOCK_SKEW.seconds // 60} minutes ahead of now)."
            )
        try:
            run = self.run
        except ProgressUpdate.run.RelatedObjectDoesNotExist:
            run = None
        produced = self.produced_quantity
        if run is not None and produced is not None and produced > run.quantity:
            errors["produced_quantity"] = (
                f"{produced} is more than the {run.quantity} pieces ordered: correct the "
                "count, or the run's ordered quantity first."
            )
        if errors:
            raise ValidationError(errors)


THRESHOLD_HOURS = [
    MinValueValidator(1, "At least 1 hour."),
    MaxValueValidator(
        MAX_HOURS, f"At most {MAX_HOURS:,} hours (a year); %(show_value)s is longer than that."
    ),
]
ESCALATION_DAYS = [
    MinValueValidator(1, "At least 1 day."),
    MaxValueValidator(
        MAX_DAYS, f"At most {MAX_DAYS} days (a year); %(show_value)s is longer than that."
    ),
]


def parse_steps(value: str) -> list[int]:
    try:
        steps = [int(part) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise ValidationError('Give days as numbers, e.g. "1,3,7".') from exc
    if not steps or steps[0] < 1 or any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValidationError('Give increasing days from 1, e.g. "1,3,7".')
    return steps


def validate_escalation_days(value: str) -> None:
    steps = parse_steps(value)
    if steps[-1] > MAX_DAYS:
        raise ValidationError(
            f"At most {MAX_DAYS} days (a year); day {steps[-1]} is later than that."
        )


class ReminderSettings(models.Model):
    """The one row of reminder settings (seed 002's "known gaps": thresholds in config,
    escalation cadence, per-partner digest)."""

    assignment_pending_hours = models.PositiveIntegerField(
        default=24,
        validators=THRESHOLD_HOURS,
        help_text="Remind when a run sent to a partner is not accepted after this many hours "
        "(1 to 8,760, a year).",
    )
    not_started_hours = models.PositiveIntegerField(
        default=24,
        validators=THRESHOLD_HOURS,
        help_text="Remind when an accepted run has not started after this many hours "
        "(1 to 8,760, a year).",
    )
    idle_hours = models.PositiveIntegerField(
        default=72,
        validators=THRESHOLD_HOURS,
        help_text="Remind when a run in progress has had no progress update (or, without "
        "any, no start) for this many hours (1 to 8,760, a year).",
    )
    escalation_days = models.CharField(
        max_length=60,
        default="1,3,7",
        validators=[validate_escalation_days],
        help_text="Days of a stall (day 1 = first found overdue) that get a reminder, "
        'e.g. "1,3,7" (at most day 365).',
    )
    escalation_repeat_days = models.PositiveIntegerField(
        default=7,
        validators=ESCALATION_DAYS,
        help_text="After the last of those days, remind every this many days (1 to 365).",
    )
    flag_after_days = models.PositiveIntegerField(
        default=7,
        validators=ESCALATION_DAYS,
        help_text="A run still stalled on this day of its reminders (day 1 = its first "
        "reminder) is flagged for ops to call (seed 002: 7 consecutive days).",
    )
    digest_enabled = models.BooleanField(
        default=False,
        help_text="One message per partner and bucket listing the runs, instead of one per run.",
    )
    dedup_window_minutes = models.PositiveIntegerField(
        default=60,
        validators=[
            MaxValueValidator(
                MAX_DEDUP_MINUTES,
                f"At most {MAX_DEDUP_MINUTES:,} minutes (a day); reminders about a run "
                "use a new dedup context each day anyway.",
            )
        ],
        help_text="A message about the same thing (context) already sent this many minutes "
        "ago or less is not sent again (0 to 1,440, a day); a marker row records the skip.",
    )

    class Meta:
        verbose_name = "reminder settings"
        verbose_name_plural = "reminder settings"
        permissions = [
            (
                "override_activation_gate",
                "Can enable the reminder schedule although its activation gate does not hold",
            )
        ]

    def __str__(self):
        return "Reminder settings"

    def save(self, *args, **kwargs):
        self.pk = 1  # a singleton
        super().save(*args, **kwargs)

    @classmethod
    def load(cls) -> "ReminderSettings":
        settings, _ = cls.objects.get_or_create(pk=1)
        return settings

    @property
    def steps(self) -> list[int]:
        return parse_steps(self.escalation_days)


class ReminderState(models.Model):
    """Escalation of one stalled run: which stall (kind and since when), how many reminders,
    when. A run that moves (another kind, a new anchor) starts a new stall."""

    run = models.OneToOneField(
        ProductionRun,
        on_delete=models.CASCADE,
        related_name="reminder",
        help_text="The stalled run.",
    )
    kind = models.CharField(
        max_length=30,
        choices=ReminderKind.choices,
        help_text="The bucket of the stall: assignment pending, not started or idle.",
    )
    stalled_since = models.DateTimeField(help_text="The timestamp the stall is measured from.")
    first_overdue_at = models.DateTimeField(help_text="When the discoverer first found it overdue.")
    reminder_count = models.PositiveIntegerField(
        default=0, help_text="Reminders sent for this stall."
    )
    last_reminded_at = models.DateTimeField(
        null=True, blank=True, help_text="When the last reminder event was emitted."
    )
    flagged_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the run, still stalled on the flag day of its reminders (Reminder "
        "settings), was flagged: ops should call.",
    )

    class Meta:
        ordering = ["-first_overdue_at"]
        indexes = [
            # admin triage filter: WHERE flagged_at IS NOT NULL
            models.Index(fields=["flagged_at"], name="reminder_flagged"),
        ]

    def __str__(self):
        return f"{self.get_kind_display()} × {self.reminder_count}"


class EventTemplateMapping(models.Model):
    """The dispatcher's event → WhatsApp template map (seed 002's RESOLVE_TEMPLATE_CODE).
    An event without a live mapping is skipped with reason no_template_for_event."""

    event_name = models.CharField(
        max_length=120, unique=True, help_text="A ledger event, e.g. production_run.reminder_idle."
    )
    template_name = models.CharField(
        max_length=120,
        help_text=(
            "The approved WhatsApp template sent for it, e.g. jyt_production_run_reminder_idle_v1."
        ),
    )
    send_design_image = models.BooleanField(
        default=False,
        help_text="Follow the message with the design image, the raw run id and the signed "
        "partner-portal link.",
    )
    is_live = models.BooleanField(
        default=True, help_text="Off: the event is skipped with reason no_template_for_event."
    )
    updated_at = models.DateTimeField(auto_now=True, help_text="Last change.")

    class Meta:
        ordering = ["event_name"]

    def __str__(self):
        return f"{self.event_name} → {self.template_name}"

    def clean(self):
        from production_runs.dispatcher import DIGEST_EVENT
        from production_runs.whatsapp_templates import SPECS

        if not self.event_name.startswith("production_run."):
            raise ValidationError({"event_name": "Production-run events start production_run."})
        # An empty name is the field's own error (required), or one the form already gave
        # (a template the event cannot fill leaves the name unset on the instance).
        if self.template_name and self.template_name not in SPECS:
            raise ValidationError(
                {
                    "template_name": f"No template {self.template_name!r} in code; known: "
                    + ", ".join(sorted(SPECS))
                }
            )
        if problem := self._meaning_problem():
            raise ValidationError({"template_name": problem})
        if self.send_design_image and DIGEST_EVENT.match(self.event_name):
            raise ValidationError(
                {
                    "send_design_image": "A digest is not followed by a design image: it names "
                    "several runs, and only a message about one run sends its design image. "
                    "Untick it for this digest event."
                }
            )

    def _meaning_problem(self) -> str:
        """Why the template says something else than the event means ("" if it does not):
        an event Herald maps by default takes that template or another version of it
        (reminder_idle a _v2 of the idle reminder, never the "cancelled" message)."""
        from production_runs.dispatcher import DEFAULT_TEMPLATE_MAP

        default = DEFAULT_TEMPLATE_MAP.get(self.event_name)
        if not default or not self.template_name:
            return ""

        def unversioned(name: str) -> str:
            return re.sub(r"_v\d+$", "", name)

        if unversioned(self.template_name) == unversioned(default[0]):
            return ""
        return (
            f"{self.template_name} does not say what {self.event_name} means: give "
            f"{default[0]} or another version of it (…_v2)."
        )


class TemplateStatus(models.TextChoices):
    APPROVED = "APPROVED", "Approved"
    PENDING = "PENDING", "Pending review"
    REJECTED = "REJECTED", "Rejected"
    PAUSED = "PAUSED", "Paused"
    DISABLED = "DISABLED", "Disabled"
    MISSING = "MISSING", "Missing (not submitted)"


class TemplateVariantStatus(models.Model):
    """What Meta says about one template in one language on one WABA."""

    platform = models.ForeignKey(
        WhatsAppPlatform,
        on_delete=models.CASCADE,
        related_name="template_statuses",
        help_text="The WABA the variant lives on.",
    )
    template_name = models.CharField(max_length=120, help_text="The template's name at Meta.")
    language = models.CharField(
        max_length=12, help_text="The variant's language code, e.g. en or hi."
    )
    status = models.CharField(
        max_length=20,
        choices=TemplateStatus.choices,
        default=TemplateStatus.MISSING,
        help_text=(
            "What Meta says: approved, pending review, rejected, paused, "
            "disabled, or missing (not submitted). The activation gate "
            "needs every variant approved."
        ),
    )
    meta_id = models.CharField(
        "Meta template id", max_length=64, blank=True, help_text="Meta's id of the template."
    )
    reason = models.CharField(
        max_length=300, blank=True, help_text="Meta's rejection reason, if any."
    )
    updated_at = models.DateTimeField(
        default=timezone.now, help_text="When the status was last read or changed."
    )

    class Meta:
        ordering = ["platform", "template_name", "language"]
        verbose_name = "template variant status"
        verbose_name_plural = "template variant statuses"
        constraints = [
            models.UniqueConstraint(
                fields=["platform", "template_name", "language"], name="template_variant_once"
            )
        ]

    def __str__(self):
        return f"{self.template_name} ({self.language}) on {self.platform.label}: {self.status}"


class ScheduleChange(models.Model):
    """Audit of the reminder schedule being switched on or off, and of gate overrides."""

    at = models.DateTimeField(default=timezone.now, help_text="When the schedule was switched.")
    by = models.CharField(max_length=150, help_text="Who switched it.")
    enabled = models.BooleanField(
        help_text="Checked: enabled; unchecked: disabled.",
    )
    gate_held = models.BooleanField(
        help_text="Whether the activation gate held at the time.",
    )
    overridden = models.BooleanField(
        default=False,
        help_text=(
            "Enabled although the gate did not hold (needs the override permission and a reason)."
        ),
    )
    reason = models.CharField(max_length=300, blank=True, help_text="The reason given.")
    gate = models.JSONField(default=list, blank=True, help_text="The gate's checks at the time.")

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self):
        what = "enabled" if self.enabled else "disabled"
        return f"{what} by {self.by} at {self.at:%Y-%m-%d %H:%M}"
