"""Provider pacing: each sender hands messages to its provider at most `rate_per_second`.

Slots are handed out one interval (1/rate) apart from a per-sender cursor kept in the
database and advanced under a row lock, so every worker shares one pace and no one-second
window holds more than the rate. A 429 with Retry-After pauses the sender.
"""

import math
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction

from notifications.models import Sender


def sender_key(channel: str, payload: dict) -> str:
    if channel == "email":
        identity = payload.get("from_email") or settings.DEFAULT_FROM_EMAIL
    elif channel == "sms":
        identity = (
            payload.get("from")
            or settings.TWILIO_MESSAGING_SERVICE_SID
            or settings.TWILIO_FROM_NUMBER
            or "default"
        )
    else:
        identity = payload.get("phone_number_id") or settings.WHATSAPP_PHONE_NUMBER_ID or "default"
    return f"{channel}:{identity}"


def senders_for(keys: set[str]) -> dict[str, Sender]:
    """The senders of these keys by key; one seen for the first time is created at its
    channel's default rate."""
    found = {sender.key: sender for sender in Sender.objects.filter(key__in=keys)}
    missing = keys - found.keys()
    if missing:
        defaults = settings.SENDER_DEFAULT_RATES
        Sender.objects.bulk_create(
            [
                Sender(
                    key=key,
                    channel=key.split(":", 1)[0],
                    rate_per_second=defaults.get(key.split(":", 1)[0], 1.0),
                    max_queue_hours=settings.SENDER_MAX_QUEUE_HOURS.get(key.split(":", 1)[0]),
                )
                for key in missing
            ],
            ignore_conflicts=True,  # another worker may create it at the same moment
        )
        found.update((s.key, s) for s in Sender.objects.filter(key__in=missing))
    return found


def interval(sender: Sender) -> timedelta:
    """The least time between two handovers of one sender: 1/rate, rounded up to the
    microsecond so that `rate` of them never fit inside one second."""
    return timedelta(microseconds=math.ceil(1_000_000 / sender.rate_per_second))


def reserve_slots(*, key: str, count: int, now: datetime) -> tuple[list[datetime], Sender]:
    """Reserve `count` consecutive sending slots for one sender (earliest first)."""
    with transaction.atomic():
        sender = Sender.objects.select_for_update().get(key=key)
        step = interval(sender)
        start = max(t for t in (now, sender.next_slot_at, sender.paused_until) if t is not None)
        slots = [start + step * i for i in range(count)]
        sender.next_slot_at = start + step * count
        sender.save(update_fields=["next_slot_at"])
    return slots, sender


def pause(*, key: str, until: datetime) -> None:
    """The provider said "slow down" (429 + Retry-After): nothing for this sender before then."""
    with transaction.atomic():
        sender = Sender.objects.select_for_update().get(key=key)
        if sender.paused_until is None or sender.paused_until < until:
            sender.paused_until = until
        if sender.next_slot_at is None or sender.next_slot_at < until:
            sender.next_slot_at = until
        sender.save(update_fields=["paused_until", "next_slot_at"])
