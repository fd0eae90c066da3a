"""Argument parsing shared by Herald's management commands (--at)."""

import argparse
from datetime import UTC, datetime

from django.conf import settings
from django.utils import timezone

# The years a time given by hand may fall in: the checks around a time reach months before
# and after it, which Python's datetime cannot do near year 1 or 9999.
YEARS = (1900, 2999)


def out_of_range(moment: datetime) -> str:
    """Why a time given by hand cannot be used ("" when it can)."""
    first, last = YEARS
    if first <= moment.year <= last:
        return ""
    return f"must fall in the years {first}–{last}, not {moment.year}"


def parse_at(value: str) -> datetime:
    """--at ISO8601: a naive time is read in the project's time zone (settings.TIME_ZONE:
    a command runs with no other zone activated)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--at must be an ISO 8601 time like 2026-11-22T10:00:00+05:30, not {value!r}"
        ) from exc
    if problem := out_of_range(moment):
        raise argparse.ArgumentTypeError(f"--at {problem}")
    if timezone.is_naive(moment):
        if problem := clock_change(moment):
            raise argparse.ArgumentTypeError(f"--at {value!r} {problem}: give an offset")
        moment = timezone.make_aware(moment)
    return moment


def clock_change(moment: datetime) -> str:
    """Why a time without an offset is not one moment in the project's time zone ("" when
    it is): the clocks skip it or repeat it. Taken as it was, a skipped time became another
    hour and a repeated one silently the first of its two."""
    zone = timezone.get_default_timezone()
    first, second = (moment.replace(tzinfo=zone, fold=fold) for fold in (0, 1))
    if first.utcoffset() == second.utcoffset():
        return ""
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != moment:
        return f"does not exist in {zone.key} (the clocks skip it)"
    both = " or ".join(d.isoformat() for d in (first, second))
    return f"happens twice in {zone.key} (the clocks go back: {both})"


def at_help(what: str) -> str:
    """The help of an --at option read by parse_at: `what` the time is for, then how a time
    without an offset is read (the same words in every command)."""
    return (
        f"ISO 8601 time {what} (default: the current time); without an offset it is read "
        f"as {settings.TIME_ZONE} (settings.TIME_ZONE): 2026-11-23T10:00 is 10:00 "
        f"{settings.TIME_ZONE}, 2026-11-23T10:00+05:30 is 10:00 in India"
    )
