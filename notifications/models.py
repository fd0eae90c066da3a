"""The delivery engine's data: templates, notifications, the outbox (Delivery), what happened
to each delivery (DeliveryEvent) and the event ledger (Event, EventHandling).

Models hold data and single-row rules; the work is done in templating.py, dispatch.py and
events.py."""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, validate_email
from django.db import models
from django.utils import timezone

from cadence.validators import validate_e164

# A retry's wait, in seconds: never negative, at most a day (a longer one would outlast
# any workflow's expiry, and a huge one overflow the time it is added to).
RETRY_SECONDS = [MinValueValidator(0), MaxValueValidator(86_400)]


class Channel(models.TextChoices):
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    WHATSAPP = "whatsapp", "WhatsApp"


class MessageType(models.TextChoices):
    """Seed 003's message types; cadence limits some of them per day."""

    REPORT = "report", "Report"
    ALERT = "alert", "Alert"
    STORY_SO_FAR = "story_so_far", "Story so far"
    CUSTOM = "custom", "Custom"


# Side effects of this risk or more need an approved ProposedAction (DESIGN invariant 3); the
# high_risk_ops kill switch stops them.
HIGH_RISK_LEVEL = 3


class Workflow(models.Model):
    class Type(models.TextChoices):
        BATCH_NOTIFY = "batch_notify", "Batch customer notification"
        TRIGGER = "trigger", "Trigger events"
        SCHEDULE = "schedule", "Schedule"

    name = models.CharField(
        max_length=120,
        unique=True,
        help_text="Unique name staff see in lists, e.g. batch_notify or Kiosk health alerts.",
    )
    type = models.CharField(
        max_length=20,
        choices=Type.choices,
        help_text=(
            "batch_notify: one message to a customer cohort (seeds "
            "000/001); trigger: evaluated every 5 minutes over kiosks "
            "(seed 003); schedule: cron-driven, such as the "
            "production-run reminders (seed 002)."
        ),
    )
    description = models.TextField(
        blank=True, help_text="What the workflow is for, in a sentence staff will understand."
    )
    risk_level = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(5)],
        help_text=(
            "1 (low) to 5. Side effects of risk 3 or more need an approved proposed action, "
            "so a trigger workflow (which sends on its own) is 1 or 2."
        ),
    )
    is_active = models.BooleanField(
        default=True,
        help_text=(
            "Off: the workflow is not run (trigger workflows are skipped "
            "by the 5-minute evaluator; nothing already scheduled is "
            "cancelled)."
        ),
    )
    retry_max_attempts = models.PositiveSmallIntegerField(
        default=3,
        validators=[MinValueValidator(1), MaxValueValidator(20)],
        help_text="Attempts per delivery, the first one included (seed 001: 3), 1 to 20.",
    )
    retry_base_seconds = models.FloatField(
        default=2.0,
        validators=RETRY_SECONDS,
        help_text="Wait after the first failure; doubles after each further one (0 to 86,400).",
    )
    retry_max_seconds = models.FloatField(
        default=30.0,
        validators=RETRY_SECONDS,
        help_text="Longest wait between attempts (0 to 86,400 seconds).",
    )
    reflexion_enabled = models.BooleanField(
        default=False, help_text="Write a reflexion entry (narrative + tags) after each run."
    )
    created_at = models.DateTimeField(auto_now_add=True, help_text="When the workflow was defined.")

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        if self.type == self.Type.BATCH_NOTIFY and (self.risk_level or 0) < HIGH_RISK_LEVEL:
            # Its sends are held by the high_risk_ops kill switch because of this level:
            # lowering it would release a frozen batch without turning the switch off.
            raise ValidationError(
                {
                    "risk_level": f"A batch notification emails customers in bulk (seed 001: "
                    f"risk 4): its risk stays {HIGH_RISK_LEVEL} or more, so the high_risk_ops "
                    "kill switch keeps holding it."
                }
            )
        if self.type == self.Type.TRIGGER and (self.risk_level or 0) >= HIGH_RISK_LEVEL:
            raise ValidationError(
                {
                    "risk_level": f"A trigger workflow sends on its own every five minutes, "
                    f"with no approval step, and a side effect of risk {HIGH_RISK_LEVEL} or "
                    f"more needs an approved proposed action: give 1 or 2."
                }
            )


class WorkflowRun(models.Model):
    """One execution of a workflow [workflow_run_log]."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        AWAITING_APPROVAL = "awaiting_approval", "Awaiting approval (HITL gate)"
        AWAITING_REVIEW = "awaiting_review", "Awaiting per-recipient review"
        RUNNING = "running", "Sending"
        COMPLETED = "completed", "Completed"
        PARTIAL = "partial", "Partial"
        FAILED = "failed", "Failed"
        ABORTED = "aborted", "Aborted (resume or cancel)"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED = (Status.COMPLETED, Status.PARTIAL, Status.FAILED, Status.CANCELLED)
    # Runs whose waiting deliveries are not sent: aborted (resume or cancel it) or cancelled.
    HALTED = (Status.ABORTED, Status.CANCELLED)

    workflow = models.ForeignKey(
        Workflow,
        on_delete=models.PROTECT,
        related_name="runs",
        help_text="The workflow definition this run executes [workflow_run_log.workflow_type].",
    )
    status = models.CharField(
        max_length=20,
        choices=Status.choices,
        default=Status.PENDING,
        help_text=(
            "Where the run is: awaiting the HITL gate, awaiting "
            "per-recipient review, sending, finished (completed, partial,"
            " failed, cancelled) or aborted by the circuit breaker "
            "(resume or cancel it)."
        ),
    )
    status_reason = models.CharField(
        max_length=300,
        blank=True,
        help_text="Why the run is in this status, e.g. the breaker trip that aborted it.",
    )
    started_at = models.DateTimeField(default=timezone.now, help_text="When the run was launched.")
    completed_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the last delivery was decided (sent, failed or skipped).",
    )
    summary = models.JSONField(
        default=dict,
        blank=True,
        help_text="The run log's summary_json: the recipients' counts by outcome.",
    )
    inputs = models.JSONField(
        default=dict,
        blank=True,
        help_text="The seed's inputs: customer_cohort_filter, subject, body_template, "
        "max_recipients, and the recipients frozen at launch.",
    )
    created_by = models.CharField(
        max_length=150, blank=True, help_text="Who launched it (the seed's Mike)."
    )
    consecutive_failures = models.PositiveIntegerField(
        default=0,
        help_text="Failed sends in a row; 5 trip the batch circuit breaker (seed 001).",
    )

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            # The runs whose waiting deliveries dispatch must not claim (see dispatch).
            models.Index(
                fields=["status"],
                name="run_halted",
                condition=models.Q(status__in=["aborted", "cancelled"]),  # HALTED
            )
        ]
        permissions = [
            ("launch_batch", "Can launch a batch customer notification"),
            ("override_recipient_cap", "Can set max_recipients above 50"),
            ("resume_batch", "Can resume or cancel an aborted batch"),
        ]

    def __str__(self):
        return f"{self.workflow.name} run {self.pk}"


class Customer(models.Model):
    """A customer a batch notification can reach [customers, the NetSuite mirror]."""

    company_name = models.CharField(
        max_length=200,
        help_text=(
            "The customer's name [customers.companyname]; {{ customer_name }} in batch templates."
        ),
    )
    email = models.EmailField(
        blank=True,
        help_text=(
            "Where batch notifications go. Blank: the customer is never in a cohort. Changing "
            "it here re-addresses their batch emails not yet sent (scheduled, or failed and "
            "retryable); removing it cancels the scheduled ones."
        ),
    )
    phone = models.CharField(
        max_length=32, blank=True, validators=[validate_e164], help_text="E.164, e.g. +12125550100."
    )
    account_ref = models.CharField(
        max_length=60,
        unique=True,
        help_text=(
            "The customer's account reference (NetSuite), unique; {{ "
            "account_ref }} in batch templates."
        ),
    )
    bid = models.CharField(max_length=40, blank=True, help_text="Contract bid, e.g. B5875.")
    region = models.CharField(max_length=60, blank=True, help_text="e.g. NYC DOE")
    school_year = models.CharField(max_length=20, blank=True, help_text="e.g. 2026-27")
    tags = models.CharField(max_length=300, blank=True, help_text="Comma-separated tags.")
    is_inactive = models.BooleanField(
        default=False,
        help_text="Inactive customers are never in a cohort [customers.isinactive].",
    )

    class Meta:
        ordering = ["company_name"]
        indexes = [models.Index(fields=["bid", "region"], name="customer_cohort")]

    def __str__(self):
        return f"{self.company_name} ({self.account_ref})"


class BatchAttachment(models.Model):
    """A file sent with every message of one batch."""

    workflow_run = models.ForeignKey(
        WorkflowRun,
        on_delete=models.CASCADE,
        related_name="attachments",
        help_text="The batch run whose every message carries this file.",
    )
    file = models.FileField(
        upload_to="attachments/%Y/%m/",
        help_text="The uploaded file, stored under MEDIA_ROOT/attachments/.",
    )
    name = models.CharField(max_length=200, help_text="File name recipients see.")
    mimetype = models.CharField(
        max_length=100,
        blank=True,
        help_text="Content type sent with the file, e.g. application/pdf.",
    )

    def __str__(self):
        return self.name


class ProposedAction(models.Model):
    """A staged change waiting for a human decision [proposed_actions]."""

    class Type(models.TextChoices):
        BATCH_ENVELOPE = "workflow_batch_notify", "Batch notification (HITL gate)"
        HITL_REVIEW = "hitl_review", "Per-recipient review"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    action_type = models.CharField(
        max_length=40,
        choices=Type.choices,
        help_text=(
            "workflow_batch_notify: the HITL gate of a whole batch (one "
            "per run); hitl_review: one recipient's personalized message "
            "to approve or reject."
        ),
    )
    entity_ref = models.CharField(max_length=200, help_text="e.g. workflow:batch_notify:run_12")
    workflow_run = models.ForeignKey(
        WorkflowRun,
        on_delete=models.CASCADE,
        related_name="proposed_actions",
        help_text="The batch run this decision belongs to.",
    )
    customer = models.ForeignKey(
        Customer,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The recipient under review (blank for the batch's HITL gate).",
    )
    subject = models.CharField(
        max_length=300,
        blank=True,
        help_text="The subject the recipient would get, already personalized (on the batch's "
        "gate: the template, personalized once the gate is approved).",
    )
    body = models.TextField(
        blank=True,
        help_text="The message the recipient would get, already personalized (on the batch's "
        "gate: the template, personalized once the gate is approved).",
    )
    status = models.CharField(
        max_length=20,
        choices=Status.choices,
        default=Status.PENDING,
        help_text="Pending until a person approves or rejects it; decided once, never twice.",
    )
    decided_by = models.CharField(
        max_length=150, blank=True, help_text="Who approved or rejected it."
    )
    decided_at = models.DateTimeField(null=True, blank=True, help_text="When it was decided.")
    created_at = models.DateTimeField(default=timezone.now, help_text="When it was staged.")

    class Meta:
        ordering = ["id"]
        permissions = [("decide_proposedaction", "Can approve or reject proposed actions")]
        constraints = [
            models.UniqueConstraint(
                fields=["workflow_run", "action_type", "customer"],
                name="one_proposal_per_recipient",
            ),
            models.UniqueConstraint(
                fields=["workflow_run", "action_type"],
                condition=models.Q(customer__isnull=True),
                name="one_envelope_per_run",
            ),
        ]

    def __str__(self):
        who = f" for {self.customer}" if self.customer_id else ""
        return f"{self.get_action_type_display()}{who} ({self.status})"


class AuditEntry(models.Model):
    """Who did what, when, with which value (e.g. a max_recipients override)."""

    at = models.DateTimeField(default=timezone.now, help_text="When it happened.")
    by = models.CharField(max_length=150, help_text="The staff member (user name) who did it.")
    action = models.CharField(
        max_length=80, help_text="What was done, e.g. max_recipients_override or batch_resume."
    )
    target = models.CharField(
        max_length=200, help_text="What it was done to, e.g. workflow:batch_notify:run_12."
    )
    detail = models.JSONField(
        default=dict,
        blank=True,
        help_text="The values involved, e.g. the max_recipients asked for.",
    )

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self):
        return f"{self.action} on {self.target} by {self.by}"


class ReflexionEntry(models.Model):
    """What happened in a run, in words, so later runs can look it up [reflexion_log]."""

    workflow_run = models.ForeignKey(
        WorkflowRun,
        on_delete=models.CASCADE,
        related_name="reflexions",
        help_text="The run this entry remembers.",
    )
    narrative = models.TextField(
        help_text="What happened in the run, in words [reflexion_log.narrative].",
    )
    tags = models.JSONField(
        default=list,
        blank=True,
        help_text='Tags later runs search by, e.g. ["batch_notify", "breaker"].',
    )
    created_at = models.DateTimeField(
        default=timezone.now, help_text="When it was written (after the run finished)."
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "reflexion entries"

    def __str__(self):
        return f"reflexion for run {self.workflow_run_id}"


class VerifyCheck(models.Model):
    """A post-run sanity check, run by the verify cron after its window
    [workflow_verify_results]."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PASS = "pass", "Pass"
        FAIL = "fail", "Fail"
        TIMEOUT = "timeout", "Timeout"

    workflow_run = models.ForeignKey(
        WorkflowRun,
        on_delete=models.CASCADE,
        related_name="verify_checks",
        help_text="The run this check verifies.",
    )
    name = models.CharField(
        max_length=80,
        help_text=(
            "Which check, e.g. all_recipients_logged (every approved "
            "recipient has a logged outcome)."
        ),
    )
    status = models.CharField(
        max_length=20,
        choices=Status.choices,
        default=Status.PENDING,
        help_text=(
            "Pending until its window passes; then pass, fail, or timeout"
            " when it still cannot be decided [workflow_verify_results]."
        ),
    )
    due_at = models.DateTimeField(help_text="Not run before this (the end of its window).")
    timeout_at = models.DateTimeField(help_text="Still not decidable by then: timeout.")
    checked_at = models.DateTimeField(
        null=True, blank=True, help_text="When the verify cron last ran it."
    )
    expected = models.IntegerField(
        null=True,
        blank=True,
        help_text="What the check expected, e.g. the number of approved recipients.",
    )
    observed = models.IntegerField(
        null=True,
        blank=True,
        help_text="What the check found, e.g. recipients with a logged outcome.",
    )
    detail = models.CharField(max_length=300, blank=True, help_text="The result in words.")

    class Meta:
        ordering = ["-due_at"]
        constraints = [
            models.UniqueConstraint(fields=["workflow_run", "name"], name="verify_check_once")
        ]

    def __str__(self):
        return f"{self.name}: {self.status}"


SMS_MAX_CHARACTERS = 1600  # Twilio refuses a longer body (error 21617)


class MessageTemplate(models.Model):
    """Subject and body in Django template syntax over declared variables only."""

    name = models.CharField(max_length=120, help_text="Name staff pick it by; unique per channel.")
    channel = models.CharField(
        max_length=20,
        choices=Channel.choices,
        help_text="email, sms or whatsapp: decides how the body is rendered and sent.",
    )
    subject = models.CharField(
        max_length=300, blank=True, help_text="Email only. Template syntax allowed."
    )
    body = models.TextField(
        help_text=(
            "Django template syntax, e.g. Hello {{ customer_name }}. Only the declared "
            "variables are available; email bodies are placed into the layout in "
            "templates/emails/. At most 20,000 characters; control-flow tags only; a "
            "{% for %} goes over a variable and loops do not nest; center, ljust, rjust, "
            "stringformat and floatformat take a number up to 1,000."
        )
    )
    variables = models.JSONField(
        default=list,
        blank=True,
        help_text='Declared variable names, e.g. ["customer_name", "account_ref"].',
    )
    sample_context = models.JSONField(
        default=dict, blank=True, help_text="Sample values used by the admin preview."
    )
    whatsapp_template = models.CharField(
        max_length=120,
        blank=True,
        help_text="WhatsApp only: the approved template name at Meta; variables fill {{1}}..{{n}}.",
    )
    message_type = models.CharField(
        max_length=20,
        choices=MessageType.choices,
        default=MessageType.CUSTOM,
        help_text=(
            "Seed 003's type (report, alert, story so far, custom); "
            "cadence limits some types per day."
        ),
    )
    batch_run = models.OneToOneField(
        WorkflowRun,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        editable=False,
        related_name="+",
        help_text=(
            "Set when a batch launch made this template: the record of the text that run "
            "launched. It is read-only and not offered where templates are picked."
        ),
    )
    updated_at = models.DateTimeField(auto_now=True, help_text="Last edit.")

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["name", "channel"], name="template_name_channel")
        ]

    def __str__(self):
        return f"{self.name} ({self.get_channel_display()})"

    def clean(self):
        from notifications.templating import TemplateProblem, compile_template

        if not isinstance(self.variables, list) or not all(
            isinstance(v, str) and v.isidentifier() for v in self.variables
        ):
            raise ValidationError({"variables": 'Give a list of variable names, e.g. ["name"].'})
        if not isinstance(self.sample_context, dict):
            raise ValidationError(
                {
                    "sample_context": "Give an object of sample values, "
                    'e.g. {"customer_name": "Ada"}.'
                }
            )
        if self.channel == Channel.WHATSAPP and not self.whatsapp_template:
            raise ValidationError({"whatsapp_template": "A WhatsApp template needs its name."})
        if self.channel == Channel.SMS and len(self.body) > SMS_MAX_CHARACTERS:
            raise ValidationError(
                {
                    "body": f"An SMS is at most {SMS_MAX_CHARACTERS:,} characters (Twilio's "
                    f"limit); this body has {len(self.body):,} before its variables are "
                    "filled in."
                }
            )
        try:
            compile_template(self)
        except TemplateProblem as problem:
            raise ValidationError({problem.field: str(problem)}) from problem

    def carries(self, channel: str) -> bool:
        """Whether a message of this template can go on `channel`: WhatsApp sends approved
        templates only (`whatsapp_template`); email and SMS send the rendered text."""
        return channel != Channel.WHATSAPP or bool(self.whatsapp_template)


class Notification(models.Model):
    """One message intent: a template and its context, for a set of recipients [CommsInstance]."""

    template = models.ForeignKey(
        MessageTemplate,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text=(
            "The template its deliveries were rendered from (blank: text "
            "written directly, e.g. a batch)."
        ),
    )
    context = models.JSONField(
        default=dict,
        blank=True,
        help_text="The values shared by every recipient; each delivery adds its own.",
    )
    origin = models.CharField(
        max_length=200, help_text="What asked for it, e.g. batch_notify:run_12 or kiosk_offline."
    )
    message_type = models.CharField(
        max_length=20,
        choices=MessageType.choices,
        default=MessageType.CUSTOM,
        help_text="Seed 003's type; counted by the recipients' cadence.",
    )
    workflow_run = models.ForeignKey(
        WorkflowRun,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The run that created it, if any.",
    )
    created_at = models.DateTimeField(default=timezone.now, help_text="When it was created.")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.origin} #{self.pk}"


# Conditions of two partial indexes of Delivery, for the queries that use them to repeat:
# SQLite uses a partial index only when the query's WHERE holds its condition as written.
HAS_MESSAGE_ID = ~models.Q(provider_message_id="")
HAS_CONTEXT = ~models.Q(context_key="")


class Delivery(models.Model):
    """One notification to one address on one channel: the outbox row."""

    class Status(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        OPENED = "opened", "Opened"
        CLICKED = "clicked", "Clicked"
        FAILED = "failed", "Failed"
        BOUNCED = "bounced", "Bounced"
        COMPLAINED = "complained", "Complained"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired"
        SKIPPED = "skipped", "Skipped"
        UNKNOWN = "unknown", "Unknown (reconcile)"

    # Statuses a delivery can still leave by being sent.
    PENDING_STATUSES = (Status.SCHEDULED,)
    FINAL_STATUSES = (
        Status.FAILED,
        Status.CANCELLED,
        Status.EXPIRED,
        Status.SKIPPED,
    )

    notification = models.ForeignKey(
        Notification,
        on_delete=models.CASCADE,
        related_name="deliveries",
        help_text="The message intent this delivery sends to one address.",
    )
    recipient_key = models.CharField(
        max_length=120, help_text="Who this is for, e.g. customer:42 or stakeholder:7."
    )
    channel = models.CharField(
        max_length=20, choices=Channel.choices, help_text="email, sms or whatsapp."
    )
    address = models.CharField(max_length=254, help_text="Email address or E.164 phone number.")
    message_type = models.CharField(
        max_length=20,
        choices=MessageType.choices,
        default=MessageType.CUSTOM,
        help_text="Seed 003's type; cadence limits some types per day.",
    )
    context_key = models.CharField(
        max_length=300,
        blank=True,
        help_text="What it is about, e.g. kiosk_health_status:12:3:LOW_BATTERY or "
        "production_run:42:reminder:2026-11-23 (cooldowns, dedup, resolved notices).",
    )
    subject = models.CharField(max_length=300, blank=True, help_text="Rendered subject (email).")
    body = models.TextField(blank=True, help_text="Rendered plain text.")
    html_body = models.TextField(blank=True, help_text="Rendered HTML (email).")
    payload = models.JSONField(
        default=dict, blank=True, help_text="Channel extras: headers, attachments, template."
    )
    idempotency_key = models.CharField(
        max_length=200,
        help_text="At most one delivery per key, e.g. 12:345 (a batch's run id, customer id).",
    )
    send_at = models.DateTimeField(default=timezone.now, help_text="Not sent before this time.")
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Not sent after this time; then marked expired."
    )
    status = models.CharField(
        max_length=20,
        choices=Status.choices,
        default=Status.SCHEDULED,
        help_text=(
            "scheduled (waiting, see why and when), sending, sent, then "
            "what the provider reported (delivered, opened, clicked, "
            "bounced, complained), or failed, cancelled, expired, "
            "skipped, unknown (the worker stopped mid-send: reconcile)."
        ),
    )
    status_reason = models.CharField(
        max_length=300, blank=True, help_text="Why it is in its current state."
    )
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Sends tried so far.")
    max_attempts = models.PositiveSmallIntegerField(
        default=3, help_text="Gives up (failed) after this many attempts (seed 001: 3)."
    )
    retry_base_seconds = models.FloatField(
        default=2.0,
        validators=RETRY_SECONDS,
        help_text="Wait after the first failed attempt; doubles each time (0 to 86,400).",
    )
    retry_max_seconds = models.FloatField(
        default=30.0,
        validators=RETRY_SECONDS,
        help_text="Longest wait between attempts (0 to 86,400 seconds).",
    )
    last_error = models.TextField(blank=True, help_text="The provider's last error, if any.")
    provider = models.CharField(
        max_length=40,
        blank=True,
        help_text="Who carried it, e.g. postmark, twilio, whatsapp or recording (development).",
    )
    provider_message_id = models.CharField(
        max_length=200,
        blank=True,
        help_text=(
            "The provider's id of the message; tracking webhooks "
            "(delivered, opened, bounced...) find the delivery by it."
        ),
    )
    fallback_of = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="fallbacks",
        db_index=False,  # delivery_fallback_of: only the rows that are fallbacks
        help_text="The delivery this one replaces on its fallback channel.",
    )
    fallback_channel = models.CharField(
        max_length=20,
        choices=Channel.choices,
        blank=True,
        help_text="Where to send instead when this channel cannot (e.g. email → SMS).",
    )
    fallback_address = models.CharField(
        max_length=254,
        blank=True,
        help_text="Address on the fallback channel (e.g. the phone for SMS).",
    )
    sender = models.CharField(
        max_length=200,
        blank=True,
        help_text="The paced sending identity, e.g. sms:+15005550006 or whatsapp:1055.",
    )
    paced_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The sending slot this delivery already holds with its sender's pacing.",
    )
    workflow_run = models.ForeignKey(
        WorkflowRun,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="deliveries",
        db_index=False,  # delivery_run_status (workflow_run, status) serves it
        help_text="The workflow run that created it, if any.",
    )
    claim_token = models.UUIDField(
        null=True,
        blank=True,
        editable=False,
        help_text="Set by the worker that claimed it for sending (at most once).",
    )
    claimed_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a worker claimed it; a row left sending too long becomes unknown.",
    )
    sent_at = models.DateTimeField(
        null=True, blank=True, help_text="When the provider accepted it."
    )
    created_at = models.DateTimeField(
        default=timezone.now, help_text="When the row was written (before anything was sent)."
    )
    updated_at = models.DateTimeField(auto_now=True, help_text="Last change of the row.")

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"
        indexes = [
            # dispatch: WHERE status='scheduled' AND send_at <= now ORDER BY send_at, id LIMIT n
            # (with id, PostgreSQL reads the claim in index order and stops at n; without
            # it, every claim sorted the whole backlog: quadratic in a large drain)
            models.Index(fields=["status", "send_at", "id"], name="delivery_due"),
            # the expiry sweep of every dispatch round: WHERE status='scheduled' AND
            # expires_at <= now. Only rows that can expire are in it (a batch's emails have
            # no expiry): the sweep no longer reads the whole backlog (10 ms a round at
            # 10,000 due), and the claims and outcomes of rows without one do not write to
            # it. With status first, SQLite picks it without statistics (over delivery_due).
            models.Index(
                fields=["status", "expires_at"],
                name="delivery_expiring",
                condition=models.Q(expires_at__isnull=False),
            ),
            # Partial indexes below: on PostgreSQL every claim and outcome writes a new row
            # version into each index whose condition it meets (the status changes, so no
            # update is heap-only); a batch's email, with no message id yet, no context
            # and no fallback, skips these three at its claim (five 10,000 drains in turn
            # in one process: 3-14 % faster; a full bench run's spread hides it). SQLite
            # uses one only when the query repeats its condition (HAS_MESSAGE_ID,
            # HAS_CONTEXT above).
            # tracking webhooks: WHERE provider_message_id = ... (and it is not "")
            models.Index(
                fields=["provider_message_id"],
                name="delivery_provider_id",
                condition=HAS_MESSAGE_ID,
            ),
            # cadence history: WHERE recipient_key IN (...) AND send_at >= ...
            models.Index(fields=["recipient_key", "send_at"], name="delivery_recipient_time"),
            # dedup and resolved notices: WHERE context_key = ... AND created_at >= ...
            models.Index(
                fields=["context_key", "created_at"],
                name="delivery_context_time",
                condition=HAS_CONTEXT,
            ),
            # a fallback's original: WHERE fallback_of_id = ...
            models.Index(
                fields=["fallback_of"],
                name="delivery_fallback_of",
                condition=models.Q(fallback_of__isnull=False),
            ),
            # a batch's progress and completion: counts by status WHERE workflow_run_id = ...
            # (answered from the index alone, not from 10,000 wide rows)
            models.Index(fields=["workflow_run", "status"], name="delivery_run_status"),
        ]
        # A constraint rather than unique=True: the same uniqueness, without the second
        # (LIKE) index PostgreSQL would get for it. Every index is written again by each
        # claim and outcome of a delivery (so no index on `sender`, and the run's own
        # foreign-key index is left to delivery_run_status).
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="delivery_idempotency_key")
        ]

    def __str__(self):
        return f"{self.get_channel_display()} to {self.address} ({self.status})"


class DeliveryEvent(models.Model):
    """A state change or provider event of one delivery."""

    class Kind(models.TextChoices):
        QUEUED = "queued", "Queued"
        DEFERRED = "deferred", "Deferred"
        CLAIMED = "claimed", "Claimed"
        SENT = "sent", "Sent"
        RETRY = "retry", "Retry scheduled"
        DELIVERED = "delivered", "Delivered"
        OPENED = "opened", "Opened"
        CLICKED = "clicked", "Clicked"
        FAILED = "failed", "Failed"
        BOUNCED = "bounced", "Bounced"
        COMPLAINED = "complained", "Complained"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired"
        SKIPPED = "skipped", "Skipped"
        UNKNOWN = "unknown", "Unknown"
        READDRESSED = "readdressed", "Re-addressed"
        REPLANNED = "replanned", "Re-planned"

    delivery = models.ForeignKey(
        Delivery,
        on_delete=models.CASCADE,
        related_name="events",
        help_text="The delivery this happened to.",
    )
    kind = models.CharField(
        max_length=20,
        choices=Kind.choices,
        help_text=(
            "What happened: queued, deferred, claimed, sent, retry, "
            "delivered, opened, clicked, failed, bounced, complained, "
            "unsubscribed, cancelled, expired, skipped, unknown, readdressed (the "
            "customer's email was corrected before it was sent), or replanned (brought "
            "forward when staff loosened the cadence that queued it)."
        ),
    )
    at = models.DateTimeField(
        default=timezone.now,
        help_text="When it happened (the provider's time for tracking events).",
    )
    reason = models.CharField(
        max_length=300,
        blank=True,
        help_text="Why, e.g. the cadence rule that queued it or the provider's error.",
    )
    provider_event_id = models.CharField(
        max_length=200,
        blank=True,
        help_text="The provider's id of the event; a webhook retry is recorded once.",
    )
    data = models.JSONField(
        default=dict, blank=True, help_text="The provider's payload, as received."
    )

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            # The same provider event (webhook retry) is recorded once.
            models.UniqueConstraint(
                fields=["delivery", "provider_event_id"],
                condition=~models.Q(provider_event_id=""),
                name="delivery_event_once",
            )
        ]

    def __str__(self):
        return f"{self.kind} at {self.at:%Y-%m-%d %H:%M:%S}"


class Event(models.Model):
    """A row in the event ledger [recordEvent]. Subscribers match its name by pattern."""

    name = models.CharField(
        max_length=120,
        db_index=True,
        help_text=(
            "What happened, e.g. workflow.completed or "
            "production_run.reminder_idle; subscribers match it by "
            "pattern (production_run.*)."
        ),
    )
    payload = models.JSONField(
        default=dict, blank=True, help_text="The event's data, as the subscribers receive it."
    )
    idempotency_key = models.CharField(
        max_length=200,
        unique=True,
        help_text="One event per key: a producer retry records nothing twice.",
    )
    created_at = models.DateTimeField(default=timezone.now, help_text="When it was recorded.")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.name} ({self.idempotency_key})"


class EventHandling(models.Model):
    """One subscriber's handling of one event: recorded once, retried when it fails."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed (retrying)"
        GAVE_UP = "gave_up", "Gave up"

    event = models.ForeignKey(
        Event,
        on_delete=models.CASCADE,
        related_name="handlings",
        help_text="The ledger event being handled.",
    )
    subscriber = models.CharField(
        max_length=200,
        help_text="The subscriber handling it, e.g. the WhatsApp reminder dispatcher.",
    )
    status = models.CharField(
        max_length=20,
        choices=Status.choices,
        default=Status.PENDING,
        help_text="pending, running, done, failed (retried later) or gave up.",
    )
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Tries so far.")
    last_error = models.TextField(blank=True, help_text="The error of the last failed try.")
    next_attempt_at = models.DateTimeField(
        default=timezone.now, help_text="When a failed handling is tried again."
    )
    claim_token = models.UUIDField(
        null=True,
        blank=True,
        editable=False,
        help_text="Set by the worker handling it (each handling runs once).",
    )
    claimed_at = models.DateTimeField(null=True, blank=True, help_text="When a worker took it.")
    handled_at = models.DateTimeField(null=True, blank=True, help_text="When it was done.")
    result = models.JSONField(
        default=dict,
        blank=True,
        help_text="What the subscriber reported, e.g. the delivery it created or why it skipped.",
    )

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["event", "subscriber"], name="event_handled_once")
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="handling_due")]

    def __str__(self):
        return f"{self.subscriber} ← {self.event.name}"


class RecordedMessage(models.Model):
    """What a development backend would have handed to a provider (nothing leaves the box)."""

    channel = models.CharField(
        max_length=20, choices=Channel.choices, help_text="The channel it would have gone on."
    )
    to = models.CharField(max_length=500, help_text="The address it would have gone to.")
    subject = models.CharField(
        max_length=300, blank=True, help_text="Subject as it would have been sent."
    )
    body = models.TextField(blank=True, help_text="Plain-text body as it would have been sent.")
    html_body = models.TextField(
        blank=True, help_text="HTML body as it would have been sent (email)."
    )
    payload = models.JSONField(
        default=dict, blank=True, help_text="What the provider API would have received."
    )
    provider_message_id = models.CharField(
        max_length=200, default="", blank=True, help_text="The id the development backend made up."
    )
    created_at = models.DateTimeField(
        auto_now_add=True, help_text="When the development backend recorded it."
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.channel} to {self.to}"


class Suppression(models.Model):
    """An address Herald must not contact on a channel: a hard bounce, a complaint, an
    unsubscribe or a manual block. Dispatch skips it with the reason recorded."""

    class Reason(models.TextChoices):
        BOUNCE = "bounce", "Hard bounce"
        COMPLAINT = "complaint", "Spam complaint"
        UNSUBSCRIBE = "unsubscribe", "Unsubscribed"
        MANUAL = "manual", "Manual"

    address = models.CharField(max_length=254, help_text="Lower-case email or E.164 number.")
    channel = models.CharField(
        max_length=20,
        choices=Channel.choices,
        help_text="The channel the address must not be contacted on.",
    )
    reason = models.CharField(
        max_length=20,
        choices=Reason.choices,
        help_text="Hard bounce, spam complaint, unsubscribe or a manual block.",
    )
    source = models.CharField(
        max_length=300, blank=True, help_text="What caused it, e.g. the tracking event."
    )
    created_by = models.CharField(
        max_length=150, blank=True, help_text="Who added it (blank: a tracking event)."
    )
    created_at = models.DateTimeField(
        default=timezone.now, help_text="Since when the address is suppressed."
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["address", "channel"], name="suppressed_once")
        ]

    def __str__(self):
        return f"{self.address} ({self.channel}): {self.get_reason_display()}"

    def clean(self):
        """The address as dispatch compares it: a lower-case email address, or a phone
        number in E.164 for SMS and WhatsApp. Checked when staff add one; a provider's
        bounce may have stored an address that is not valid, and it stays suppressed."""
        if not self._state.adding:
            return
        if self.channel == Channel.EMAIL:
            self.address = (self.address or "").strip().lower()
            try:
                validate_email(self.address)
            except ValidationError as error:
                raise ValidationError(
                    {"address": "Give an email address, e.g. ops@example.com."}
                ) from error
        elif self.channel:
            self.address = (self.address or "").strip()
            try:
                validate_e164(self.address)
            except ValidationError as error:
                raise ValidationError({"address": error.messages}) from error


class UnmatchedProviderEvent(models.Model):
    """A tracking callback for a message id Herald does not know (yet): kept so it can be
    matched when the delivery records its provider id, instead of failing the webhook."""

    provider = models.CharField(max_length=40, help_text="Who sent the callback.")
    provider_message_id = models.CharField(
        max_length=200,
        db_index=True,
        help_text="The message id it names, not (yet) on any delivery.",
    )
    kind = models.CharField(
        max_length=20, help_text="What the provider reported (delivered, opened, bounced...)."
    )
    provider_event_id = models.CharField(
        max_length=200, blank=True, help_text="The provider's id of the event."
    )
    at = models.DateTimeField(default=timezone.now, help_text="When it happened, by the provider.")
    data = models.JSONField(default=dict, blank=True, help_text="The callback's payload.")
    matched_delivery = models.ForeignKey(
        Delivery,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The delivery it was applied to once the id became known.",
    )
    received_at = models.DateTimeField(default=timezone.now, help_text="When Herald received it.")

    class Meta:
        ordering = ["-received_at"]

    def __str__(self):
        return f"{self.provider} {self.kind} for {self.provider_message_id}"


class ProviderReport(models.Model):
    """A provider's tracking report as received: the webhook answers as soon as the report is
    stored (after its signature is checked), a worker applies it to its delivery."""

    provider = models.CharField(max_length=40, help_text="Who sent the report.")
    provider_message_id = models.CharField(max_length=200, help_text="The message id it names.")
    kind = models.CharField(
        max_length=20, help_text="What the provider reported (delivered, opened, bounced...)."
    )
    provider_event_id = models.CharField(
        max_length=200,
        blank=True,
        help_text="The provider's id of the event (deduplicates retries).",
    )
    at = models.DateTimeField(
        help_text="When it happened, by the provider.",
    )
    data = models.JSONField(default=dict, blank=True, help_text="The report's payload.")
    received_at = models.DateTimeField(
        default=timezone.now, help_text="When the webhook stored it."
    )
    claim_token = models.UUIDField(
        null=True, blank=True, editable=False, help_text="Set by the worker applying it."
    )
    claimed_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When a worker took it: a claim older than 15 minutes (its worker died) is "
        "taken again.",
    )
    attempts = models.PositiveSmallIntegerField(
        default=0, help_text="Times applying it raised an error (given up after 5)."
    )
    processed_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was applied to its delivery."
    )
    outcome = models.CharField(
        max_length=40,
        blank=True,
        help_text="What applying it did: recorded, duplicate or unmatched; failed after 5 "
        "errors (in the worker's log).",
    )

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            # the worker: WHERE processed_at IS NULL ORDER BY id
            models.Index(fields=["processed_at", "id"], name="report_pending"),
        ]

    def __str__(self):
        return f"{self.provider} {self.kind} for {self.provider_message_id}"


class Sender(models.Model):
    """A sending identity with its provider rate (an email account, a Twilio number, a
    WhatsApp phone-number id). Sends are spaced at least 1/rate seconds apart across every
    worker, so no one-second window carries more than `rate_per_second` messages."""

    key = models.CharField(max_length=200, unique=True, help_text="e.g. sms:+15005550006")
    channel = models.CharField(
        max_length=20,
        choices=Channel.choices,
        help_text="The channel this sending identity sends on.",
    )
    rate_per_second = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.01), MaxValueValidator(10_000)],
        help_text="Most messages per second (US long code: 1; WhatsApp: 80), 0.01 to 10,000.",
    )
    next_slot_at = models.DateTimeField(
        null=True, blank=True, help_text="Earliest time the next message may be handed over."
    )
    paused_until = models.DateTimeField(
        null=True, blank=True, help_text="Set by a 429 with Retry-After: nothing before this."
    )
    max_queue_hours = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.01), MaxValueValidator(8_760)],
        help_text="How long the provider holds a queued message (Twilio SMS: 10 h), up to a "
        "year (8,760 h). A delivery that would expire in the provider's queue is not handed "
        "over.",
    )

    class Meta:
        ordering = ["key"]

    def __str__(self):
        return f"{self.key} ({self.rate_per_second:g}/s)"


class ProviderBreaker(models.Model):
    """A provider's circuit breaker, shared by every worker."""

    class State(models.TextChoices):
        CLOSED = "closed", "Closed (sending)"
        OPEN = "open", "Open (holding)"
        HALF_OPEN = "half_open", "Half-open (one trial call)"

    provider = models.CharField(
        max_length=40,
        unique=True,
        help_text="The channel and provider this breaker protects, e.g. email:postmark.",
    )
    state = models.CharField(
        max_length=20,
        choices=State.choices,
        default=State.CLOSED,
        help_text=(
            "Closed: sending. Open: holding sends after repeated failures"
            " (fallback channels are used). Half-open: one trial call "
            "decides."
        ),
    )
    consecutive_failures = models.PositiveIntegerField(
        default=0, help_text="Transient failures in a row; the threshold opens the breaker."
    )
    threshold = models.PositiveIntegerField(
        default=5, help_text="Consecutive transient failures that open the breaker."
    )
    cooloff_seconds = models.PositiveIntegerField(
        default=60, help_text="How long it stays open before one trial call."
    )
    opened_at = models.DateTimeField(null=True, blank=True, help_text="When it last opened.")
    trial_token = models.UUIDField(
        null=True,
        blank=True,
        editable=False,
        help_text="Held by the worker making the half-open trial call.",
    )
    last_error = models.TextField(blank=True, help_text="The error that counted last.")

    class Meta:
        ordering = ["provider"]

    def __str__(self):
        return f"{self.provider}: {self.state}"


class BreakerTransition(models.Model):
    breaker = models.ForeignKey(
        ProviderBreaker,
        on_delete=models.CASCADE,
        related_name="history",
        help_text="The provider breaker that changed state.",
    )
    at = models.DateTimeField(default=timezone.now, help_text="When it changed.")
    from_state = models.CharField(max_length=20, help_text="State before.")
    to_state = models.CharField(max_length=20, help_text="State after (open = a trip).")
    reason = models.CharField(
        max_length=300, blank=True, help_text="Why, e.g. the failure that tripped it."
    )

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self):
        return f"{self.from_state} → {self.to_state} at {self.at:%Y-%m-%d %H:%M:%S}"


class KillSwitch(models.Model):
    """Stops matching deliveries in place (they stay scheduled) while it is on."""

    class Scope(models.TextChoices):
        EVERYTHING = "everything", "Everything"
        CHANNEL = "channel", "One channel"
        WORKFLOW = "workflow", "One workflow"
        HIGH_RISK = "high_risk_ops", "High-risk operations (workflows of risk 3 or more)"

    name = models.CharField(max_length=120, unique=True, help_text="e.g. high_risk_ops")
    scope = models.CharField(
        max_length=20,
        choices=Scope.choices,
        help_text=(
            "What it stops: everything, one channel, one workflow, or "
            "high_risk_ops (launches and sends of workflows of risk 3 or "
            "more, seed 001's kill:high_risk_ops)."
        ),
    )
    channel = models.CharField(
        max_length=20,
        choices=Channel.choices,
        blank=True,
        help_text="For a channel switch: the channel it stops.",
    )
    workflow = models.ForeignKey(
        Workflow,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="+",
        help_text="For a workflow switch: the workflow it stops.",
    )
    is_on = models.BooleanField(
        default=False,
        help_text=(
            "On: matching deliveries stay scheduled (frozen); a switch of the "
            "high_risk_ops scope also blocks batch launches. Changed only with the "
            "Turn on / Turn off actions (audited)."
        ),
    )
    reason = models.CharField(
        max_length=300,
        blank=True,
        help_text="Why it was last turned on or off (asked on the confirmation page).",
    )
    changed_by = models.CharField(
        max_length=150, blank=True, help_text="Who last turned it on or off."
    )
    changed_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was last turned on or off."
    )

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "kill switches"
        permissions = [("toggle_killswitch", "Can turn kill switches on and off")]

    def __str__(self):
        return f"{self.name} ({'ON' if self.is_on else 'off'})"

    def clean(self):
        if self.is_on and not self._state.adding:
            return  # its fields are read-only while it is on (see the admin)
        if self.scope == self.Scope.CHANNEL and not self.channel:
            raise ValidationError({"channel": "A channel switch needs its channel."})
        if self.scope == self.Scope.WORKFLOW and not self.workflow_id:
            raise ValidationError({"workflow": "A workflow switch needs its workflow."})
        if self.channel and self.scope != self.Scope.CHANNEL:
            raise ValidationError({"channel": "Only a channel switch names a channel."})
        if self.workflow_id and self.scope != self.Scope.WORKFLOW:
            raise ValidationError({"workflow": "Only a workflow switch names a workflow."})


class KillSwitchChange(models.Model):
    """Audit: who turned which switch on or off, when, and why."""

    switch = models.ForeignKey(
        KillSwitch,
        on_delete=models.CASCADE,
        related_name="changes",
        help_text="The kill switch that was changed.",
    )
    turned_on = models.BooleanField(
        help_text="Checked: turned on; unchecked: turned off.",
    )
    by = models.CharField(max_length=150, help_text="Who changed it.")
    reason = models.CharField(
        max_length=300, blank=True, help_text="The reason given on the confirmation page."
    )
    at = models.DateTimeField(default=timezone.now, help_text="When it was changed.")

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self):
        return f"{'on' if self.turned_on else 'off'} by {self.by} at {self.at:%Y-%m-%d %H:%M}"


# Trigger workflows (seed 003) live in their own module; importing them here registers them
# with this app. At the bottom so that module can import the models above.
from notifications.trigger_models import *  # noqa: E402, F403
