"""A kiosk's health from its last reported state (seed 003's five attributes).

- NOT_CHARGING: `charging` is false.
- SCREEN_OFF: `screen_state` is false.
- LOW_BATTERY: battery below KIOSK_LOW_BATTERY_PERCENT (20 %).
- OFFLINE: no heartbeat for KIOSK_OFFLINE_AFTER_MINUTES (5 min) or `connection_status`
  false. A kiosk that never sent one counts once it is that old.
- MODE: a documented placeholder, as in the seed. Kiosks report their mode and the admin
  shows it, but no mode is judged unhealthy until someone says which modes are wrong.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q

NOT_CHARGING = "NOT_CHARGING"
SCREEN_OFF = "SCREEN_OFF"
LOW_BATTERY = "LOW_BATTERY"
OFFLINE = "OFFLINE"
MODE = "MODE"  # placeholder: never raised (see the module docstring)
ISSUES = (NOT_CHARGING, SCREEN_OFF, LOW_BATTERY, OFFLINE)
ISSUE_LABELS = {
    NOT_CHARGING: "not charging",
    SCREEN_OFF: "screen off",
    LOW_BATTERY: "low battery",
    OFFLINE: "offline",
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
    return sorted(found)


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
    """The database's version of `issues_of(...) != []`."""
    return (
        Q(**{f"{prefix}charging": False})
        | Q(**{f"{prefix}screen_state": False})
        | Q(**{f"{prefix}battery_level__lt": settings.KIOSK_LOW_BATTERY_PERCENT})
        | offline_filter(now, prefix)
    )
