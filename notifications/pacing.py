"""Provider pacing: each sender hands messages to its provider at most `rate_per_second`.

Slots are handed out one interval (1/rate) apart from a per-sender cursor kept in the
database and advanced under a row lock, so every worker shares one pace and no one-second
window holds more than the rate. A 429 with Retry-After pauses the sender.
"""

import math
from collections.abc import Collection
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q

from notifications.models import AuditEntry, Delivery, Sender


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
    return _interval(sender.rate_per_second)


def _interval(rate_per_second: float) -> timedelta:
    return timedelta(microseconds=math.ceil(1_000_000 / rate_per_second))


def reserve_slots(*, key: str, count: int, now: datetime) -> list[datetime]:
    """Reserve `count` consecutive sending slots for one sender (earliest first): its
    cursor moves from the latest of `now`, the cursor and the end of a pause."""
    if connection.vendor == "postgresql":
        end, rate = _advance_cursor(key=key, count=count, now=now)
        step = _interval(rate)
        start = end - step * count
    else:  # SQLite: the write transaction holds the whole database
        with transaction.atomic():
            sender = Sender.objects.select_for_update().get(key=key)
            step = interval(sender)
            start = max(t for t in (now, sender.next_slot_at, sender.paused_until) if t is not None)
            sender.next_slot_at = start + step * count
            sender.save(update_fields=["next_slot_at"])
    return [start + step * i for i in range(count)]


def _advance_cursor(*, key: str, count: int, now: datetime) -> tuple[datetime, float]:
    """PostgreSQL: move the sender's cursor `count` intervals on in one statement, and
    return where it now stands and the rate it used. Called outside a transaction (as
    dispatch does), the row is locked only while the statement runs: read, lock, write
    and commit (as on SQLite) kept every other worker of that sender waiting through
    three round trips (20 workers on one sender: 27 of 200 reads over 10 ms). GREATEST
    ignores NULLs; the interval is rounded up to the microsecond as `interval` does."""
    meta, quote = Sender._meta, connection.ops.quote_name
    key_column, rate, cursor_column, paused = (
        quote(meta.get_field(name).column)
        for name in ("key", "rate_per_second", "next_slot_at", "paused_until")
    )
    sql = (
        f"UPDATE {quote(meta.db_table)} SET {cursor_column} = "
        f"GREATEST(%s, {cursor_column}, {paused}) + interval '1 microsecond' * "
        f"(CEIL(1000000 / {rate}) * %s) "
        f"WHERE {key_column} = %s RETURNING {cursor_column}, {rate}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [now, count, key])
        row = cursor.fetchone()
    if row is None:
        raise Sender.DoesNotExist(f"no sender {key!r}")
    return row[0], row[1]


def pause(*, key: str, until: datetime) -> None:
    """The provider said "slow down" (429 + Retry-After): nothing for this sender before then."""
    with transaction.atomic():
        sender = Sender.objects.select_for_update().get(key=key)
        if sender.paused_until is None or sender.paused_until < until:
            sender.paused_until = until
        if sender.next_slot_at is None or sender.next_slot_at < until:
            sender.next_slot_at = until
        sender.save(update_fields=["paused_until", "next_slot_at"])


def sender_restart(*, keys: Collection[str], by: str, now: datetime) -> tuple[int, int]:
    """Pace these senders from `now` again, for when their next slot or pause lies ahead of
    the clock for no reason that still holds (e.g. `dispatch_due --at` a later time). The
    deliveries they had put back to wait for a slot are due again and go in the order they
    had, at most the sender's rate (dispatch sends overdue deliveries in bursts of one
    second's worth of the rate), and new ones queue after them. Audited. Returns (senders
    restarted, deliveries due again)."""
    with transaction.atomic():
        ahead = Sender.objects.select_for_update().filter(
            Q(next_slot_at__gt=now) | Q(paused_until__gt=now), key__in=list(keys)
        )
        restarted = {sender.key: sender for sender in ahead}
        if not restarted:
            return 0, 0
        waiting = Delivery.objects.filter(
            status=Delivery.Status.SCHEDULED,
            paced_until__gt=now,
            channel__in={sender.channel for sender in restarted.values()},
        ).only("id", "sender", "channel", "payload")
        held: dict[str, list[int]] = {key: [] for key in restarted}
        for delivery in waiting:
            key = delivery.sender or sender_key(delivery.channel, delivery.payload)
            if key in held:
                held[key].append(delivery.id)
        due_again = Delivery.objects.filter(
            id__any_of=[i for ids in held.values() for i in ids],
            status=Delivery.Status.SCHEDULED,
        ).update(
            send_at=now,
            paced_until=now,
            status_reason=f"paced: its sender's pace was restarted by {by}"[:300],
            updated_at=now,
        )
        Sender.objects.filter(key__in=list(restarted)).update(next_slot_at=None, paused_until=None)
        AuditEntry.objects.bulk_create(
            AuditEntry(
                at=now,
                by=by,
                action="sender_pace_restart",
                target=f"sender:{key}"[:200],
                detail={
                    "next_slot_at": sender.next_slot_at and sender.next_slot_at.isoformat(),
                    "paused_until": sender.paused_until and sender.paused_until.isoformat(),
                    "deliveries_due_again": len(held[key]),
                },
            )
            for key, sender in restarted.items()
        )
    return len(restarted), due_again
