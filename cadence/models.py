"""Who may be contacted how often: personas with their cadence, stakeholders (with
per-person overrides that are enforced), and Layer 1 trigger cooldowns.

This app imports nothing of Herald's: the policy (policy.py) is pure and the engine asks it.
"""

import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from cadence.policy import DEFAULT_RULES, DEFAULT_TYPE_LIMITS, MESSAGE_TYPES, Rules
from cadence.validators import validate_e164, validate_hours


class ContactChannel(models.TextChoices):
    # The engine's channel names (notifications.models.Channel); repeated here because
    # this app sits below the engine and imports nothing of it.
    EMAIL = "email", "Email"
    SMS = "sms", "SMS"
    WHATSAPP = "whatsapp", "WhatsApp"


# (field on Persona/Stakeholder, message type) for the per-type daily limits.
TYPE_LIMIT_FIELDS = tuple((f"max_{t}_per_day", t) for t in MESSAGE_TYPES)
CADENCE_FIELDS = (
    "cooldown_hours",
    "max_per_day",
    "max_per_week",
    "max_per_month",
    *(name for name, _ in TYPE_LIMIT_FIELDS),
)

_CAP_HELP = "0 = unlimited."


def validate_time_zone(value: str) -> None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise ValidationError(
            f"{value!r} is not a time zone; use an IANA name such as Europe/London."
        ) from error


def _default_time_zone() -> str:
    return settings.TIME_ZONE


class Persona(models.Model):
    """A group of stakeholders with similar roles and one cadence (Manager, Executive...)."""

    name = models.CharField(
        max_length=80,
        unique=True,
        help_text="e.g. Manager, Executive, Technician (seed 003's personas).",
    )
    description = models.TextField(
        blank=True, help_text="Who belongs to it and why its cadence is what it is."
    )
    cooldown_hours = models.FloatField(
        default=DEFAULT_RULES.cooldown_hours,
        validators=[validate_hours],
        help_text="Least time between any two messages to one person, at most a year. 0 = none.",
    )
    max_per_day = models.PositiveIntegerField(
        default=DEFAULT_RULES.max_per_day, help_text=_CAP_HELP
    )
    max_per_week = models.PositiveIntegerField(
        default=DEFAULT_RULES.max_per_week, help_text="Weeks start on Monday. " + _CAP_HELP
    )
    max_per_month = models.PositiveIntegerField(
        default=DEFAULT_RULES.max_per_month, help_text=_CAP_HELP
    )
    max_report_per_day = models.PositiveIntegerField(
        default=DEFAULT_TYPE_LIMITS["report"], help_text=_CAP_HELP
    )
    max_alert_per_day = models.PositiveIntegerField(
        default=DEFAULT_TYPE_LIMITS["alert"], help_text=_CAP_HELP
    )
    max_story_so_far_per_day = models.PositiveIntegerField(
        default=DEFAULT_TYPE_LIMITS["story_so_far"], help_text=_CAP_HELP
    )
    max_custom_per_day = models.PositiveIntegerField(
        default=DEFAULT_TYPE_LIMITS["custom"], help_text=_CAP_HELP
    )

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def rules(self) -> Rules:
        return Rules(
            cooldown_hours=self.cooldown_hours,
            max_per_day=self.max_per_day,
            max_per_week=self.max_per_week,
            max_per_month=self.max_per_month,
            type_limits={t: getattr(self, name) for name, t in TYPE_LIMIT_FIELDS},
        )


class Stakeholder(models.Model):
    """A person who hears about sites and kiosks. Blank cadence fields inherit the
    persona's; filled ones override it for this person (and are enforced)."""

    name = models.CharField(
        max_length=120,
        help_text="How the person is addressed, {{ stakeholder_name }} in templates.",
    )
    email = models.EmailField(
        blank=True, help_text="Where email alerts go (needed for the email channel)."
    )
    phone = models.CharField(
        max_length=20,
        blank=True,
        validators=[validate_e164],
        help_text="E.164, e.g. +14155550100 (checked with the phonenumbers library).",
    )
    persona = models.ForeignKey(
        Persona,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="stakeholders",
        help_text="Whose cadence applies. None: the seed's defaults.",
    )
    preferred_channel = models.CharField(
        max_length=20,
        choices=ContactChannel.choices,
        default=ContactChannel.EMAIL,
        help_text=(
            "The channel tried first; the fallback is used when cadence or an outage holds it."
        ),
    )
    fallback_channel = models.CharField(
        max_length=20,
        choices=ContactChannel.choices,
        blank=True,
        help_text="Used when the preferred channel cannot carry a message (cadence, outage).",
    )
    time_zone = models.CharField(
        max_length=64,
        default=_default_time_zone,
        validators=[validate_time_zone],
        help_text="Days, weeks and months of the cadence are counted in this zone.",
    )
    is_active = models.BooleanField(
        default=True, help_text="Inactive stakeholders are never contacted."
    )
    # Overrides: blank = inherit from the persona.
    cooldown_hours = models.FloatField(
        null=True,
        blank=True,
        validators=[validate_hours],
        help_text=(
            "Override: least time between two messages to this person, at most a year. "
            "Blank: the persona's."
        ),
    )
    max_per_day = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Override: most messages a day (0 = unlimited). Blank: the persona's.",
    )
    max_per_week = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Override: most messages a week, from Monday (0 = unlimited). Blank: the persona's."
        ),
    )
    max_per_month = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Override: most messages a month (0 = unlimited). Blank: the persona's.",
    )
    max_report_per_day = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Override: most reports a day (0 = unlimited). Blank: the persona's.",
    )
    max_alert_per_day = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Override: most alerts a day (0 = unlimited). Blank: the persona's.",
    )
    max_story_so_far_per_day = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Override: most story-so-far messages a day (0 = unlimited). Blank: the persona's."
        ),
    )
    max_custom_per_day = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Override: most custom messages a day (0 = unlimited). Blank: the persona's.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def recipient_key(self) -> str:
        return f"stakeholder:{self.pk}"

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)

    def clean(self):
        if self.fallback_channel and self.fallback_channel == self.preferred_channel:
            raise ValidationError(
                {"fallback_channel": "The fallback must differ from the preferred channel."}
            )
        for channel in (self.preferred_channel, self.fallback_channel):
            if channel and not self.address_for(channel):
                field = "email" if channel == ContactChannel.EMAIL else "phone"
                raise ValidationError({field: f"Needed for the {channel} channel."})

    def address_for(self, channel: str) -> str:
        return self.email if channel == ContactChannel.EMAIL else self.phone

    def overrides(self) -> dict[str, object]:
        """The cadence fields this person overrides, with their values."""
        return {f: getattr(self, f) for f in CADENCE_FIELDS if getattr(self, f) is not None}

    def rules(self) -> Rules:
        """Effective rules: each field from this person's override, else the persona, else
        the seed's default."""

        def pick(name: str, default):
            own = getattr(self, name)
            if own is not None:
                return own
            if self.persona is not None:
                return getattr(self.persona, name)
            return default

        return Rules(
            cooldown_hours=pick("cooldown_hours", DEFAULT_RULES.cooldown_hours),
            max_per_day=pick("max_per_day", DEFAULT_RULES.max_per_day),
            max_per_week=pick("max_per_week", DEFAULT_RULES.max_per_week),
            max_per_month=pick("max_per_month", DEFAULT_RULES.max_per_month),
            type_limits={t: pick(name, DEFAULT_TYPE_LIMITS[t]) for name, t in TYPE_LIMIT_FIELDS},
        )


class TriggerCooldown(models.Model):
    """Layer 1: when a trigger workflow last fired one context (kiosk + project + issues).
    One row per (workflow, context key); claiming a fire is a conditional update of it."""

    workflow_key = models.CharField(
        max_length=80, help_text="The trigger workflow, e.g. workflow:3."
    )
    context_key = models.CharField(
        max_length=300, help_text="e.g. kiosk_health_status:12:3:LOW_BATTERY,NOT_CHARGING"
    )
    event = models.CharField(
        max_length=80, blank=True, help_text="The trigger event of the context, e.g. kiosk_offline."
    )
    last_sent_at = models.DateTimeField(
        help_text="When the workflow last fired this context (Layer 1 counts from here).",
    )
    opened_at = models.DateTimeField(
        help_text="When this context first fired since it last cleared."
    )
    cleared_at = models.DateTimeField(
        null=True, blank=True, help_text="When it was seen cleared (resolved notices)."
    )
    fire_count = models.PositiveIntegerField(
        default=1, help_text="How often it fired since it first opened."
    )
    claim_token = models.UUIDField(
        null=True,
        blank=True,
        editable=False,
        help_text="Set by the evaluator tick that claimed the fire.",
    )

    class Meta:
        ordering = ["-last_sent_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["workflow_key", "context_key"], name="trigger_cooldown_once"
            )
        ]
        indexes = [
            # claims read back: WHERE workflow_key = ... AND claim_token = ...
            models.Index(fields=["workflow_key", "claim_token"], name="trigger_cooldown_claim"),
        ]

    def __str__(self):
        return f"{self.context_key} ({self.workflow_key})"
