"""Argument parsing shared by Herald's management commands (--at)."""

import argparse
from datetime import datetime

from django.conf import settings
from django.utils import timezone


def parse_at(value: str) -> datetime:
    """--at ISO8601: a naive time is read in the project's time zone (settings.TIME_ZONE:
    a command runs with no other zone activated)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--at must be an ISO 8601 time like 2026-11-22T10:00:00+05:30, not {value!r}"
        ) from exc
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def at_help(what: str) -> str:
    """The help of an --at option read by parse_at: `what` the time is for, then how a time
    without an offset is read (the same words in every command)."""
    return (
        f"ISO 8601 time {what} (default: the current time); without an offset it is read "
        f"as {settings.TIME_ZONE} (settings.TIME_ZONE): 2026-11-23T10:00 is 10:00 "
        f"{settings.TIME_ZONE}, 2026-11-23T10:00+05:30 is 10:00 in India"
    )
