"""Celery doors of the kiosks app."""

from celery import shared_task
from django.utils import timezone

from kiosks.demo import keep_reporting


@shared_task(name="herald.demo_kiosk_heartbeats", ignore_result=True)
def demo_kiosk_heartbeats_task() -> int:
    """Demo only: scheduled by `seed_demo`, never by `setup_schedules`."""
    return keep_reporting(now=timezone.now())
