"""The event ledger [recordEvent, eventBus].

`record_event` writes an Event once per idempotency key and, for every subscriber whose
pattern matches the name, one EventHandling row; after commit a worker runs them. A failed
handling is retried with backoff and stays visible in the admin; a handling that succeeded
is never run again.

Domain apps register subscribers from AppConfig.ready():

    events.subscribe("production_run.*", handle_production_run_event)
"""

import fnmatch
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, connection, transaction
from django.db.models import CharField, Q
from django.utils import timezone

from notifications.models import Event, EventHandling

logger = logging.getLogger(__name__)

MAX_HANDLING_ATTEMPTS = 5
# A handling 'running' longer than this was interrupted (worker killed); it is run again,
# which is why subscribers must be idempotent (they dedup on their own keys).
HANDLING_TIMEOUT = timedelta(minutes=15)


@dataclass(frozen=True)
class Subscriber:
    pattern: str
    name: str
    handler: Callable[[Event], dict | None]

    def matches(self, event_name: str) -> bool:
        return fnmatch.fnmatchcase(event_name, self.pattern)


_subscribers: dict[str, Subscriber] = {}


def subscribe(pattern: str, handler: Callable[[Event], dict | None], *, name: str = "") -> None:
    name = name or f"{handler.__module__}.{handler.__qualname__}"
    _subscribers[name] = Subscriber(pattern, name, handler)


def subscribers() -> list[Subscriber]:
    return list(_subscribers.values())


def record_event(
    name: str, payload: dict, *, idempotency_key: str, now: datetime | None = None
) -> tuple[Event, bool]:
    """Record an event once per key; returns (event, created). A repeat returns the first."""
    now = now or timezone.now()
    try:
        with transaction.atomic():
            event = Event.objects.create(
                name=name, payload=payload, idempotency_key=idempotency_key, created_at=now
            )
            handlings = EventHandling.objects.bulk_create(_handlings(event, now))
    except IntegrityError:
        return Event.objects.get(idempotency_key=idempotency_key), False
    if handlings:
        transaction.on_commit(kick_handlers)
    return event, True


@dataclass(frozen=True)
class NewEvent:
    """An event to record with `record_events`."""

    name: str
    payload: dict
    idempotency_key: str


def record_events(new: Sequence[NewEvent], *, now: datetime) -> set[str]:
    """Record many events at once (a page of the discoverer's reminders): the keys already
    recorded are left as they are; returns the keys recorded now.

    Three statements for the lot (read the known keys, insert the events, insert their
    handlings) and one hint to the workers after commit, where `record_event` costs a
    savepoint, two inserts and a hint per event. All or nothing: a key someone else
    records meanwhile raises IntegrityError and nothing of the lot is kept, so the caller
    can go on one event at a time with `record_event`."""
    by_key = {e.idempotency_key: e for e in new}
    known = set()
    keys = list(by_key)
    for start in range(0, len(keys), 500):
        known.update(
            Event.objects.filter(idempotency_key__in=keys[start : start + 500]).values_list(
                "idempotency_key", flat=True
            )
        )
    fresh = [e for key, e in by_key.items() if key not in known]
    if not fresh:
        return set()
    with transaction.atomic():
        events = Event.objects.bulk_create(
            [
                Event(name=e.name, payload=e.payload, idempotency_key=e.idempotency_key,
                      created_at=now)
                for e in fresh
            ],
            batch_size=500,
        )  # fmt: skip
        if any(event.pk is None for event in events):  # a database that returns no ids
            ids = dict(
                Event.objects.filter(
                    idempotency_key__in=[e.idempotency_key for e in fresh]
                ).values_list("idempotency_key", "id")
            )
            for event in events:
                event.pk = ids[event.idempotency_key]
        handled = _insert_handlings(events, now=now)
    if handled:
        transaction.on_commit(kick_handlers)
    return {e.idempotency_key for e in fresh}


def _insert_handlings(events: Sequence[Event], *, now: datetime) -> bool:
    """`_handlings` of these just-recorded events, one INSERT ... SELECT per subscriber and
    500 events, their rows copied from the events' ids: building a handling instance per
    event cost as much as the event itself. Returns whether any handling was written."""
    ids_by_subscriber: dict[str, list[int]] = {}
    names = {event.name for event in events}
    for subscriber in _subscribers.values():
        matched = {name for name in names if subscriber.matches(name)}
        if matched:
            ids_by_subscriber[subscriber.name] = [e.pk for e in events if e.name in matched]
    if not ids_by_subscriber:
        return False
    meta, quote = EventHandling._meta, connection.ops.quote_name
    event_id = meta.get_field("event")
    # Every other column as a new handling has it (status, attempts, result, ... from the
    # model's defaults), so that a field added later is written as bulk_create would.
    fields = [f for f in meta.concrete_fields if f is not event_id and not f.primary_key]
    columns = ", ".join(quote(f.column) for f in (event_id, *fields))
    source, source_id = quote(Event._meta.db_table), quote(Event._meta.pk.column)
    # PostgreSQL types the SELECT's parameters by their value, not by the column they go to.
    # Text is cast without its length: an explicit CAST to varchar(n) cuts a longer value
    # short, where storing it into the column fails as bulk_create would.
    typed = connection.vendor == "postgresql"
    placeholders = ", ".join(f"CAST(%s AS {_cast_type(f)})" if typed else "%s" for f in fields)
    with connection.cursor() as cursor:
        for subscriber, ids in ids_by_subscriber.items():
            prototype = _handling(None, subscriber, now)
            values = [f.get_db_prep_save(f.pre_save(prototype, True), connection) for f in fields]
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                cursor.execute(
                    f"INSERT INTO {quote(meta.db_table)} ({columns}) "
                    f"SELECT {source_id}, {placeholders} FROM {source} "
                    f"WHERE {source_id} IN ({', '.join(['%s'] * len(chunk))}) "
                    f"ORDER BY {source_id}",
                    [*values, *chunk],
                )
    return True


def _cast_type(field) -> str:
    if isinstance(field, CharField):
        return connection.ops.cast_char_field_without_max_length
    return field.cast_db_type(connection)


def _handlings(event: Event, now: datetime) -> list[EventHandling]:
    """One handling per subscriber whose pattern matches the event's name."""
    return [_handling(event, s.name, now) for s in _subscribers.values() if s.matches(event.name)]


def _handling(event: Event | None, subscriber: str, now: datetime) -> EventHandling:
    return EventHandling(event=event, subscriber=subscriber, next_attempt_at=now)


def kick_handlers() -> None:
    from notifications.tasks import handle_events_task

    try:
        handle_events_task.delay()
    except Exception as error:
        logger.warning("could not kick event handlers (%s); the sweep will run them", error)


def _claim(*, now: datetime, limit: int) -> list[EventHandling]:
    token = uuid.uuid4()
    due = EventHandling.objects.filter(
        Q(status__in=[EventHandling.Status.PENDING, EventHandling.Status.FAILED])
        | Q(status=EventHandling.Status.RUNNING, claimed_at__lt=now - HANDLING_TIMEOUT),
        next_attempt_at__lte=now,
    ).order_by("next_attempt_at", "id")
    with transaction.atomic():
        ids = list(due.select_for_update(skip_locked=True).values_list("id", flat=True)[:limit])
        EventHandling.objects.filter(id__in=ids).update(
            status=EventHandling.Status.RUNNING, claim_token=token, claimed_at=now
        )
    return list(
        EventHandling.objects.filter(claim_token=token, status=EventHandling.Status.RUNNING)
        .select_related("event")
        .order_by("id")
    )


def handle_due(*, now: datetime, limit: int = 100) -> dict[str, int]:
    """Run due handlings; returns counts of done, failed (will retry) and gave_up."""
    counts = {"done": 0, "failed": 0, "gave_up": 0}
    for handling in _claim(now=now, limit=limit):
        counts[_run(handling, now=now)] += 1
    return counts


def _run(handling: EventHandling, *, now: datetime) -> str:
    subscriber = _subscribers.get(handling.subscriber)
    attempts = handling.attempts + 1
    try:
        if subscriber is None:
            raise LookupError(f"no subscriber named {handling.subscriber} is installed")
        result = subscriber.handler(handling.event) or {}
    except Exception as error:
        logger.exception("event %s: subscriber %s failed", handling.event_id, handling.subscriber)
        gave_up = attempts >= MAX_HANDLING_ATTEMPTS
        EventHandling.objects.filter(id=handling.id, claim_token=handling.claim_token).update(
            status=EventHandling.Status.GAVE_UP if gave_up else EventHandling.Status.FAILED,
            attempts=attempts,
            last_error=f"{type(error).__name__}: {error}"[:2000],
            next_attempt_at=now + timedelta(seconds=min(3600, 30 * 2 ** (attempts - 1))),
        )
        return "gave_up" if gave_up else "failed"
    EventHandling.objects.filter(id=handling.id, claim_token=handling.claim_token).update(
        status=EventHandling.Status.DONE,
        attempts=attempts,
        handled_at=now,
        last_error="",
        result=result,
    )
    return "done"
