"""Heartbeats: what a kiosk reports about itself, checked field by field, recorded, and
copied onto the kiosk (whose state the evaluators read)."""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from kiosks.models import Heartbeat, Kiosk


class HeartbeatProblem(ValueError):
    """A payload that cannot be recorded; `field` names the culprit."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class HeartbeatReport:
    charging: bool
    screen_state: bool
    battery_level: int
    connection_status: bool = True
    mode: str = ""


def _bool(payload: Mapping, name: str, *, default: bool | None = None) -> bool:
    if name not in payload:
        if default is None:
            raise HeartbeatProblem(name, f"{name} is required (true or false).")
        return default
    value = payload[name]
    if not isinstance(value, bool):
        raise HeartbeatProblem(name, f"{name} must be true or false, not {value!r}.")
    return value


def parse_heartbeat(payload: object) -> HeartbeatReport:
    """Check a heartbeat body, e.g.
    {"charging": true, "screen_state": true, "battery_level": 87, "connection_status": true,
    "mode": "kiosk"}. Raises HeartbeatProblem naming the first bad field."""
    if not isinstance(payload, Mapping):
        raise HeartbeatProblem("body", "The body must be a JSON object.")
    level = payload.get("battery_level")
    if "battery_level" not in payload:
        raise HeartbeatProblem("battery_level", "battery_level is required (0 to 100).")
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 100:
        raise HeartbeatProblem(
            "battery_level", f"battery_level must be a whole number from 0 to 100, not {level!r}."
        )
    mode = payload.get("mode", "")
    # Printable only: PostgreSQL cannot store a NUL (a 500), and a control character
    # makes a mode no operator could type into KIOSK_EXPECTED_MODES.
    if not isinstance(mode, str) or len(mode) > 40 or not mode.isprintable():
        raise HeartbeatProblem(
            "mode", "mode must be printable text of at most 40 characters, on one line."
        )
    return HeartbeatReport(
        charging=_bool(payload, "charging"),
        screen_state=_bool(payload, "screen_state"),
        battery_level=level,
        connection_status=_bool(payload, "connection_status", default=True),
        mode=mode.strip().lower(),  # compared with KIOSK_EXPECTED_MODES, also lower-case
    )


def heartbeat_record(*, kiosk: Kiosk, report: HeartbeatReport, now: datetime) -> Heartbeat:
    """Keep the heartbeat and make it the kiosk's current state."""
    fields = {
        "charging": report.charging,
        "screen_state": report.screen_state,
        "battery_level": report.battery_level,
        "connection_status": report.connection_status,
        "mode": report.mode,
    }
    with transaction.atomic():
        beat = Heartbeat.objects.create(kiosk=kiosk, received_at=now, **fields)
        Kiosk.objects.filter(pk=kiosk.pk).update(last_heartbeat_at=now, **fields)
    return beat
