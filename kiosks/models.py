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
    name = models.CharField(max_length=120, unique=True)
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

    project = models.ForeignKey(Project, on_delete=models.PROTECT, related_name="kiosks")
    name = models.CharField(max_length=120)
    charging = models.BooleanField(default=True)
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
        help_text="Reported but not evaluated yet (the seed's MODE placeholder).",
    )
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    token = models.CharField(
        max_length=64,
        unique=True,
        default=new_kiosk_token,
        help_text="The kiosk sends it in the X-Kiosk-Token header of each heartbeat.",
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["project__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="kiosk_name_per_project")
        ]

    def __str__(self):
        return f"{self.name} ({self.project})" if self.project_id else self.name


class Heartbeat(models.Model):
    kiosk = models.ForeignKey(Kiosk, on_delete=models.CASCADE, related_name="heartbeats")
    received_at = models.DateTimeField(default=timezone.now)
    charging = models.BooleanField()
    screen_state = models.BooleanField()
    battery_level = models.PositiveSmallIntegerField()
    connection_status = models.BooleanField(default=True)
    mode = models.CharField(max_length=40, blank=True)

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

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="morale")
    kiosk = models.ForeignKey(
        Kiosk, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    score = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(5)]
    )
    submitted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-submitted_at"]
        indexes = [
            # morale evaluator: WHERE submitted_at >= baseline start GROUP BY project
            models.Index(fields=["submitted_at", "project"], name="morale_time_project"),
        ]

    def __str__(self):
        return f"{self.score} at {self.project} ({self.submitted_at:%Y-%m-%d})"
