"""A kiosk's health from its last reported state (seed 003's five attributes).

- NOT_CHARGING: `charging` is false.
- SCREEN_OFF: `screen_state` is false.
- LOW_BATTERY: battery below KIOSK_LOW_BATTERY_PERCENT (20 %).
- OFFLINE: no heartbeat for KIOSK_OFFLINE_AFTER_MINUTES (5 min) or `connection_status`
  false. A kiosk that never sent one counts once it is that old.
- MODE: the seed's placeholder made real. A kiosk that reports a mode other than
  KIOSK_EXPECTED_MODES ("kiosk" by default: e.g. "maintenance" or "setup", where visitors
  cannot use it) has the MODE issue; one that reports no mode is not judged.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q

NOT_CHARGING = "NOT_CHARGING"
SCREEN_OFF = "SCREEN_OFF"
LOW_BATTERY = "LOW_BATTERY"
OFFLINE = "OFFLINE"
MODE = "MODE"
ISSUES = (NOT_CHARGING, SCREEN_OFF, LOW_BATTERY, OFFLINE, MODE)
ISSUE_LABELS = {
    NOT_CHARGING: "not charging",
    SCREEN_OFF: "screen off",
    LOW_BATTERY: "low battery",
    OFFLINE: "offline",
    MODE: "in an unexpected mode",
}


def offline_cutoff(now: datetime) -> datetime:
    return now - timedelta(minutes=settings.KIOSK_OFFLINE_AFTER_MINUTES)


def is_offline(kiosk, *, now: datetime) -> bool:
    cutoff = offline_cutoff(now)
    if not kiosk.connection_status:
        return True
    if kiosk.last_heartbeat_at is None:
        return kiosk.created_at < cutoff
    return kiosk.last_heartbeat_at < cutoff


def issues_of(kiosk, *, now: datetime) -> list[str]:
    """The kiosk's current issues, sorted by name (the order of the context key)."""
    found = []
    if not kiosk.charging:
        found.append(NOT_CHARGING)
    if not kiosk.screen_state:
        found.append(SCREEN_OFF)
    if kiosk.battery_level is not None and kiosk.battery_level < settings.KIOSK_LOW_BATTERY_PERCENT:
        found.append(LOW_BATTERY)
    if is_offline(kiosk, now=now):
        found.append(OFFLINE)
    if has_unexpected_mode(kiosk):
        found.append(MODE)
    return sorted(found)


def has_unexpected_mode(kiosk) -> bool:
    expected = settings.KIOSK_EXPECTED_MODES
    return bool(expected and kiosk.mode and kiosk.mode not in expected)


def unexpected_mode_filter(prefix: str = "") -> Q:
    """The database's version of has_unexpected_mode."""
    expected = settings.KIOSK_EXPECTED_MODES
    if not expected:
        return Q(pk__in=[])
    return ~Q(**{f"{prefix}mode": ""}) & ~Q(**{f"{prefix}mode__in": expected})


def offline_filter(now: datetime, prefix: str = "") -> Q:
    """The database's version of is_offline (kept next to it so they agree). `prefix`
    reaches kiosks through a relation, e.g. "kiosks__"."""
    cutoff = offline_cutoff(now)
    return (
        Q(**{f"{prefix}connection_status": False})
        | Q(**{f"{prefix}last_heartbeat_at__lt": cutoff})
        | Q(**{f"{prefix}last_heartbeat_at__isnull": True, f"{prefix}created_at__lt": cutoff})
    )


def unhealthy_filter(now: datetime, prefix: str = "") -> Q:
    """The database's version of `issues_of(...) != []`. With a `prefix`, for the condition
    of an aggregate (`Count(..., filter=...)`): in `.filter()` across a multi-valued
    relation, the negated MODE condition would read "no kiosk has ...", as Django joins
    negations there."""
    return (
        Q(**{f"{prefix}charging": False})
        | Q(**{f"{prefix}screen_state": False})
        | Q(**{f"{prefix}battery_level__lt": settings.KIOSK_LOW_BATTERY_PERCENT})
        | offline_filter(now, prefix)
        | unexpected_mode_filter(prefix)
    )
