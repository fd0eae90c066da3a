"""Celery door onto the discoverer (scheduled weekdays 10:00 Asia/Kolkata, config/schedules)."""

from celery import shared_task
from django.utils import timezone

from production_runs.discoverer import discover_reminders


@shared_task(name="herald.discover_reminders", ignore_result=True)
def discover_reminders_task() -> dict:
    return discover_reminders(now=timezone.now())
