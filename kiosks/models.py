"""Sites (projects), their kiosks, what the kiosks report (heartbeats) and the morale scores
people enter on them."""

import secrets

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from cadence.models import Stakeholder


def new_kiosk_token() -> str:
    return secrets.token_urlsafe(32)


class Project(models.Model):
    name = models.CharField(
        max_length=120,
        unique=True,
        help_text="The site, e.g. Hudson Yards; {{ project_name }} in kiosk templates.",
    )
    stakeholders = models.ManyToManyField(
        Stakeholder,
        blank=True,
        related_name="projects",
        help_text="Project-driven recipients: told about this project's kiosks.",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class Kiosk(models.Model):
    """A device on a site. Its state is the latest heartbeat's; the evaluators read it."""

    project = models.ForeignKey(
        Project,
        on_delete=models.PROTECT,
        related_name="kiosks",
        help_text="The site (project) the kiosk stands at; its stakeholders hear about it.",
    )
    name = models.CharField(
        max_length=120,
        help_text="e.g. K-12; unique within the project; {{ kiosk_name }} in templates.",
    )
    charging = models.BooleanField(
        default=True, help_text="From the last heartbeat; False raises NOT_CHARGING."
    )
    screen_state = models.BooleanField(default=True, help_text="True: the screen is on.")
    battery_level = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(100)],
        help_text="Percent, from the last heartbeat.",
    )
    connection_status = models.BooleanField(
        default=True, help_text="False: the kiosk reported its connection as lost."
    )
    mode = models.CharField(
        max_length=40,
        blank=True,
        help_text=(
            "From the last heartbeat, e.g. kiosk; a mode outside KIOSK_EXPECTED_MODES raises "
            "MODE. Blank: never reported, not judged."
        ),
    )
    last_heartbeat_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text=(
            "When the kiosk last reported; older than KIOSK_OFFLINE_AFTER_MINUTES (5 by "
            "default), or a lost connection, means OFFLINE."
        ),
    )
    token = models.CharField(
        max_length=64,
        unique=True,
        default=new_kiosk_token,
        help_text="The kiosk sends it in the X-Kiosk-Token header of each heartbeat.",
    )
    is_active = models.BooleanField(
        default=True, help_text="Inactive kiosks are not evaluated (no alerts)."
    )
    created_at = models.DateTimeField(
        default=timezone.now, help_text="When the kiosk was registered."
    )

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="kiosk_name_per_project")
        ]

    def __str__(self):
        return f"{self.name} ({self.project})" if self.project_id else self.name


class Heartbeat(models.Model):
    kiosk = models.ForeignKey(
        Kiosk,
        on_delete=models.CASCADE,
        related_name="heartbeats",
        help_text="The kiosk that reported.",
    )
    received_at = models.DateTimeField(
        default=timezone.now, help_text="When Herald received the heartbeat."
    )
    charging = models.BooleanField(
        help_text="Whether the kiosk was charging.",
    )
    screen_state = models.BooleanField(
        help_text="Whether the screen was on.",
    )
    battery_level = models.PositiveSmallIntegerField(
        help_text="Battery percent reported.",
    )
    connection_status = models.BooleanField(
        default=True, help_text="False: the kiosk reported its connection as lost."
    )
    mode = models.CharField(
        max_length=40, blank=True, help_text="The mode it reported, e.g. kiosk or maintenance."
    )

    class Meta:
        ordering = ["-received_at"]
        indexes = [
            # dashboard: WHERE received_at >= now - 24h GROUP BY kiosk's project, hour
            models.Index(fields=["received_at"], name="heartbeat_time"),
            # kiosk page: WHERE kiosk_id = ... ORDER BY received_at DESC
            models.Index(fields=["kiosk", "received_at"], name="heartbeat_kiosk_time"),
        ]

    def __str__(self):
        return f"{self.kiosk} at {self.received_at:%Y-%m-%d %H:%M:%S}"


class MoraleResponse(models.Model):
    """One person's answer to "how is it going?" on a kiosk, 1 (bad) to 5 (great)."""

    project = models.ForeignKey(
        Project,
        on_delete=models.CASCADE,
        related_name="morale",
        help_text="The project whose morale this answer counts towards.",
    )
    kiosk = models.ForeignKey(
        Kiosk,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The kiosk it was entered on, if known.",
    )
    score = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(5)],
        help_text=(
            "1 (bad) to 5 (great); the morale evaluator compares the last "
            "MORALE_RECENT_HOURS (24 by default) with the MORALE_BASELINE_DAYS (14) before."
        ),
    )
    submitted_at = models.DateTimeField(default=timezone.now, help_text="When it was entered.")

    class Meta:
        ordering = ["-submitted_at"]
        indexes = [
            # morale evaluator: WHERE submitted_at >= baseline start GROUP BY project
            models.Index(fields=["submitted_at", "project"], name="morale_time_project"),
        ]

    def __str__(self):
        return f"{self.score} at {self.project} ({self.submitted_at:%Y-%m-%d})"
