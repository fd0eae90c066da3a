"""Argument parsing shared by Herald's management commands (--at)."""

import argparse
from datetime import datetime

from django.utils import timezone


def parse_at(value: str) -> datetime:
    """--at ISO8601: a naive time is read in the project's time zone."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--at must be an ISO 8601 time like 2026-11-22T10:00:00+05:30, not {value!r}"
        ) from exc
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment
