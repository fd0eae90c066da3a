"""Dispatch: claim due deliveries, send them outside any transaction, record the outcome.

Claims are conditional updates (plus SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL), so
any number of workers may run this at once and each delivery is handed to a provider at most
once. A delivery left "sending" by a crash is marked "unknown" for a human to reconcile; it
is never resent blindly.

Before a claimed delivery is handed over, the holds are applied in this order: kill switches
(not even claimed), the provider's circuit breaker (not claimed; fallback channel if set),
suppression (skipped), pacing (sent at its sender's next slot, or put back until then), the
provider's queue lifetime (expired rather than delivered late).
"""

import hashlib
import json
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils.module_loading import import_string

from notifications import breakers, bulk, pacing, tracking
from notifications.channels import ChannelError, OutgoingMessage, get_channel
from notifications.channels.email import email_provider
from notifications.events import record_event
from notifications.killswitches import active_switches, frozen_filter
from notifications.lookups import any_of_sql
from notifications.models import Channel, Delivery, DeliveryEvent, ProviderBreaker, WorkflowRun

logger = logging.getLogger(__name__)
Status = Delivery.Status

# The provider may well have taken the message: it answered "OK" with a body we cannot read,
# or gave no answer once the request had gone out (channels.base.network_error). Sending
# again could send twice: a human reconciles instead.
AMBIGUOUS_ERROR_CODES = {"malformed_response", "no_answer"}


@dataclass
class DispatchReport:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    expired: int = 0
    deferred: int = 0
    unknown: int = 0
    skipped: int = 0
    cancelled: int = 0
    frozen: int = 0  # due, held by a kill switch (a count of rows held, not of work done)
    breaker_held: int = 0  # due, waiting for their provider breaker's trial call (likewise)

    def add(self, outcome: str, count: int = 1) -> None:
        setattr(self, outcome, getattr(self, outcome) + count)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Clock:
    """Dispatch time: starts at `now` and runs with the real clock. Tests pass a clock whose
    waits move it instead of sleeping."""

    start: datetime
    _started: float = field(default_factory=time.monotonic)

    def now(self) -> datetime:
        return self.start + timedelta(seconds=time.monotonic() - self._started)

    def sleep_until(self, moment: datetime) -> None:
        wait = (moment - self.now()).total_seconds()
        if wait > 0:
            time.sleep(wait)


@dataclass
class ManualClock:
    """A clock that only moves when waited on (tests and benchmarks: time is moved, never
    slept). Never use it for real sends: it would hand a paced burst over at once."""

    current: datetime

    def now(self) -> datetime:
        return self.current

    def sleep_until(self, moment: datetime) -> None:
        self.current = max(self.current, moment)


def provider_of(channel: str) -> str:
    if channel == Channel.EMAIL:
        return email_provider()
    setting = {"sms": settings.SMS_BACKEND, "whatsapp": settings.WHATSAPP_BACKEND}[channel]
    return import_string(setting).provider


def retry_delay(*, attempt: int, base: float, cap: float, key: str, jitter: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): base * 2^(attempt-1),
    at most `cap`, stretched by up to `jitter` (a fraction) so a burst of failures does not
    retry in lockstep. The jitter is drawn from the key and attempt, so it is reproducible."""
    delay = min(cap, base * 2 ** (attempt - 1))
    digest = hashlib.sha256(f"{key}:{attempt}".encode()).digest()
    spread = int.from_bytes(digest[:4], "big") / 0xFFFFFFFF
    return min(cap, delay * (1 + jitter * spread))


def _bulk_transition(ids, *, now, from_status, kind, reason, **fields) -> int:
    if not ids:
        return 0
    with transaction.atomic():
        count = Delivery.objects.filter(id__any_of=ids, status=from_status).update(
            status_reason=reason[:300], updated_at=now, **fields
        )
        DeliveryEvent.objects.bulk_create(
            [DeliveryEvent(delivery_id=i, kind=kind, at=now, reason=reason[:300]) for i in ids]
        )
    return count


def mark_stuck_unknown(*, now: datetime) -> int:
    """Deliveries 'sending' for longer than the timeout: the provider may or may not have
    them. Mark them unknown, for reconciliation, instead of sending again."""
    cutoff = now - timedelta(seconds=settings.DISPATCH_SENDING_TIMEOUT_SECONDS)
    ids = list(
        Delivery.objects.filter(status=Status.SENDING, claimed_at__lt=cutoff).values_list(
            "id", flat=True
        )
    )
    return _bulk_transition(
        ids,
        now=now,
        from_status=Status.SENDING,
        kind="unknown",
        reason="worker stopped while sending: check the provider before resending",
        status=Status.UNKNOWN,
    )


def expire_overdue(*, now: datetime) -> int:
    ids = list(
        Delivery.objects.filter(status=Status.SCHEDULED, expires_at__lte=now).values_list(
            "id", flat=True
        )
    )
    return _bulk_transition(
        ids,
        now=now,
        from_status=Status.SCHEDULED,
        kind="expired",
        reason="expired before it could be sent",
        status=Status.EXPIRED,
    )


def _due(*, now: datetime, frozen: Q | None):
    due = Delivery.objects.filter(status=Status.SCHEDULED, send_at__lte=now).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )
    halted = halted_run_ids()
    if halted:
        due = due.exclude(workflow_run_id__in=halted)
    return due.exclude(frozen) if frozen is not None else due


def halted_run_ids() -> list[int]:
    """The halted runs that still have deliveries waiting (few: batches aborted by the
    breaker or cancelled; found by the `run_halted` and `delivery_run_status` indexes).
    Read first rather than joined: from a join filtered on the run's status, PostgreSQL
    guessed that one row was left when a batch's deliveries all share one run, and sorted
    the whole backlog (on disk) for every claim instead of reading the first rows of
    `delivery_due` in order."""
    waiting = Delivery.objects.filter(workflow_run_id=OuterRef("pk"), status=Status.SCHEDULED)
    return list(
        WorkflowRun.objects.filter(status__in=WorkflowRun.HALTED)
        .filter(Exists(waiting))
        .order_by()
        .values_list("id", flat=True)
    )


def claim_due(
    *,
    now: datetime,
    limit: int,
    channel: str | None = None,
    frozen: Q | None = None,
    look_first: bool = True,
) -> list[Delivery]:
    """Take up to `limit` due deliveries for this worker; others get different rows.
    `look_first`: check that something is due before opening the claim's transaction (on
    SQLite, BEGIN IMMEDIATE takes the database's write lock even to find nothing); a
    caller whose last claim came back full skips the check."""
    if look_first:
        waiting = Delivery.objects.filter(status=Status.SCHEDULED, send_at__lte=now)
        if not (waiting.filter(channel=channel) if channel else waiting).exists():
            return []
    token = uuid.uuid4()
    with transaction.atomic():
        due = _due(now=now, frozen=frozen)  # halted runs read inside the claim's transaction
        if channel:
            due = due.filter(channel=channel)
        # The rows themselves, read once while locked (FOR UPDATE SKIP LOCKED on
        # PostgreSQL; SQLite's write transaction holds the whole database): reading the ids,
        # updating, then reading the rows again cost a second pass over wide rows.
        # The columns the update writes are set rather than read.
        written = {"status": Status.SENDING, "claim_token": token, "claimed_at": now}
        rows = bulk.read_instances(
            due.order_by("send_at", "id").select_for_update(skip_locked=True, of=("self",))[:limit],
            given={**written, "updated_at": now},
        )
        if not rows:
            return []
        ids = [row.id for row in rows]
        claimed = Delivery.objects.filter(id__any_of=ids, status=Status.SCHEDULED).update(
            **written, attempts=F("attempts") + 1, updated_at=now
        )
    if claimed != len(rows):  # a database without row locks let someone take some of them
        mine = Delivery.objects.filter(id__any_of=ids, claim_token=token, status=Status.SENDING)
        return list(mine)
    for row in rows:
        row.attempts += 1
    return rows


def release(
    deliveries: list[Delivery],
    *,
    now: datetime,
    reason: str,
    send_at=None,
    paced_until=None,
    changes: dict | None = None,
) -> int:
    """Put claimed deliveries back, unsent, as if never claimed (one UPDATE per claim and
    due time, not one per delivery), with `changes` (e.g. a new address) written too."""
    groups = defaultdict(list)
    for delivery in deliveries:
        groups[(delivery.claim_token, send_at or delivery.send_at)].append(delivery.id)
    fields = dict(changes or {})
    if paced_until is not None:
        fields["paced_until"] = paced_until
    count = 0
    with transaction.atomic():
        for (token, due), ids in groups.items():
            count += Delivery.objects.filter(
                id__any_of=ids, claim_token=token, status=Status.SENDING
            ).update(
                status=Status.SCHEDULED,
                status_reason=reason[:300],
                claim_token=None,
                attempts=F("attempts") - 1,
                updated_at=now,
                send_at=due,
                **fields,
            )
    return count


def _message(
    delivery: Delivery, *, now: datetime, max_queue_hours: float | None
) -> OutgoingMessage:
    payload = dict(delivery.payload)
    if delivery.channel == Channel.SMS and (delivery.expires_at or max_queue_hours):
        lifetimes = [max_queue_hours * 3600] if max_queue_hours else []
        if delivery.expires_at:
            lifetimes.append((delivery.expires_at - now).total_seconds())
        payload["validity_period"] = max(1, int(min(lifetimes)))
    return OutgoingMessage(
        channel=delivery.channel,
        to=delivery.address,
        idempotency_key=delivery.idempotency_key,
        subject=delivery.subject,
        body=delivery.body,
        html_body=delivery.html_body,
        payload=payload,
        status_callback=status_callback_url(delivery),
    )


def status_callback_url(delivery: Delivery) -> str:
    if delivery.channel in (Channel.SMS, Channel.WHATSAPP):
        return f"{settings.SITE_URL}/webhooks/twilio/status"
    return ""


def _finish(delivery: Delivery, *, now: datetime, kind: str, reason: str, **fields) -> None:
    """Write the outcome of a claimed delivery, unless someone else already decided it."""
    with transaction.atomic():
        Delivery.objects.filter(
            id=delivery.id,
            claim_token=delivery.claim_token,
            status__in=[Status.SENDING, Status.UNKNOWN],
        ).update(status_reason=reason[:300], updated_at=now, **fields)
        DeliveryEvent.objects.create(delivery=delivery, kind=kind, at=now, reason=reason[:300])


@dataclass
class Handover:
    """A delivery the provider accepted, waiting to be written with its batch."""

    delivery: Delivery
    provider: str
    provider_message_id: str
    at: datetime


def send_claimed(
    delivery: Delivery,
    *,
    now: datetime,
    channels: dict | None = None,
    max_queue_hours: float | None = None,
) -> tuple[str, ChannelError | Handover]:
    """Hand one claimed delivery to its channel. A failure is recorded at once; a success is
    returned as a Handover for `record_sent` to write with others. `channels` caches one
    channel object per channel name."""
    channels = {} if channels is None else channels
    try:
        if delivery.channel not in channels:
            channels[delivery.channel] = get_channel(delivery.channel)
        channel = channels[delivery.channel]
        provider_id = channel.send(_message(delivery, now=now, max_queue_hours=max_queue_hours))
    except ChannelError as error:
        return _failed_attempt(delivery, error, now=now), error
    except SoftTimeLimitExceeded:
        # The task's time ran out during the call, not the provider: it may have the message
        # already (invariant 2), and the round ends (`_send_batch`).
        _finish(
            delivery,
            now=now,
            kind="unknown",
            reason="the worker's time limit stopped it while it was being handed over: "
            "check the provider before resending",
            status=Status.UNKNOWN,
            last_error="interrupted by the worker's soft time limit",
        )
        raise
    except Exception as error:  # a bug or a library surprise: retried like a transient error
        logger.exception("delivery %s: unexpected error while sending", delivery.id)
        error = ChannelError(f"{type(error).__name__}: {error}")
        return _failed_attempt(delivery, error, now=now), error
    return "sent", Handover(delivery, channel.provider, provider_id, now)


def record_sent(handovers: list[Handover], *, now: datetime) -> None:
    """Write accepted deliveries in bulk: their outcomes and their "sent" events in one
    statement per provider on PostgreSQL; on SQLite one UPDATE per provider sent for every
    row (executemany) and one INSERT of the events. Not a transaction per message. A crash
    before this leaves them 'sending'; the sweep then marks them unknown for
    reconciliation, never for a resend."""
    if not handovers:
        return
    by_id = {h.delivery.id: h for h in handovers}
    with transaction.atomic():
        recorded = _write_sent(by_id, now=now)
        # Events not written with the outcomes: for rows someone changed meanwhile (they keep
        # that change; the provider has them all the same), and on SQLite then for all.
        left = [h for i, h in by_id.items() if i not in recorded]
        DeliveryEvent.objects.bulk_create(
            [
                DeliveryEvent(
                    delivery_id=h.delivery.id,
                    kind="sent",
                    at=h.at,
                    reason=f"accepted by {h.provider}"[:300],
                )
                for h in left
            ]
        )
    for handover in handovers:
        handover.delivery.provider_message_id = handover.provider_message_id
    tracking.match_unmatched_many([h.delivery for h in handovers], now=now)


def _write_sent(by_id: dict[int, Handover], *, now: datetime) -> set[int]:
    """Write each accepted delivery's outcome, unless someone decided the row meanwhile, with
    its "sent" event; returns the ids written with their event (on SQLite all of them, or
    none when any row was left: their events are then the caller's). One UPDATE per
    provider with its rows' message ids and handover times: on PostgreSQL joined to them
    as one JSON document, as `bulk.insert_rows` sends rows there (as arrays, psycopg quoted
    each message id in Python: 12 ms of client time per 1,000 rows against 5 ms; as a CASE,
    it spent longer reading its thousand placeholders than the server did running it; an
    executemany was slower there); on SQLite run for each row by its id (executemany,
    `_write_sent_rows`)."""
    by_provider: dict[str, list[Handover]] = defaultdict(list)
    for handover in by_id.values():
        by_provider[handover.provider].append(handover)
    meta = Delivery._meta
    message_id, sent_at = meta.get_field("provider_message_id"), meta.get_field("sent_at")
    prepare_time = connection.ops.adapt_datetimefield_value
    shared = {
        "status": Status.SENT,
        "last_error": "",
        "updated_at": meta.get_field("updated_at").get_db_prep_save(now, connection),
    }
    postgresql = connection.vendor == "postgresql"
    recorded: set[int] = set()
    written = 0
    for provider, handovers in by_provider.items():
        rows = [
            (
                h.delivery.id,
                message_id.get_db_prep_save(h.provider_message_id, connection),
                # Aware datetimes from the clock: the field's checks would add nothing.
                prepare_time(h.at) if h.at.tzinfo else sent_at.get_db_prep_save(h.at, connection),
            )
            for h in handovers
        ]
        fields = {
            **shared,
            "status_reason": f"accepted by {provider}"[:300],
            "provider": provider,
        }
        if postgresql:
            recorded.update(_write_sent_document(rows, fields))
        else:
            written += _write_sent_rows(rows, fields)
    if not postgresql and written == len(by_id):
        _copy_sent_events(list(by_id))
        recorded.update(by_id)
    return recorded


def _sent_update(fields: dict) -> tuple[dict[str, str], str, list]:
    """The quoted names an outcome UPDATE needs, its SET clause for the values every row
    shares (`fields`), and their parameters."""
    quote, meta = connection.ops.quote_name, Delivery._meta
    names = {
        "table": quote(meta.db_table),
        "id": quote(meta.pk.column),
        **{
            name: quote(meta.get_field(name).column)
            for name in ("provider_message_id", "sent_at", "status", "status_reason")
        },
    }
    assignments = ", ".join(f"{quote(meta.get_field(name).column)} = %s" for name in fields)
    return names, assignments, list(fields.values())


def _write_sent_document(rows: list[tuple], fields: dict) -> list[int]:
    """PostgreSQL: the rows as one JSON document, read by json_to_recordset; the rows
    written are copied into their "sent" events by the same statement (a second statement,
    reading them again by id, cost 2-7 ms more per 1,000 in three runs of four). Returns the
    ids written."""
    name, assignments, values = _sent_update(fields)
    table, id_column = name["table"], name["id"]
    document = json.dumps(
        [{"id": i, "message_id": m, "at": at.isoformat()} for i, m, at in rows],
        ensure_ascii=False,
    )
    copy, copy_params = _sent_events_from("written")
    event, quote = DeliveryEvent._meta, connection.ops.quote_name
    sql = (
        f"WITH written AS ("
        f"UPDATE {table} SET {assignments}, {name['provider_message_id']} = sent.message_id, "
        f"{name['sent_at']} = sent.at "
        f"FROM json_to_recordset(%s) AS sent (id bigint, message_id text, "
        f"at timestamp with time zone) "
        f"WHERE {table}.{id_column} = sent.id AND {table}.{name['status']} IN (%s, %s) "
        f"RETURNING {table}.{id_column}, {table}.{name['sent_at']}, "
        f"{table}.{name['status_reason']}) "
        f"{copy} RETURNING {quote(event.get_field('delivery').column)}"
    )
    params = [*values, document, Status.SENDING, Status.UNKNOWN, *copy_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def _write_sent_rows(rows: list[tuple], fields: dict) -> int:
    """SQLite: an UPDATE of each row by its id, sent with executemany (compiled once).
    10,000 rows took 0.23 s; as a VALUES list joined to the table (materialized, then each
    row looked up) 0.35-0.39 s, and as a JSON document read by json_each 0.26-0.32 s."""
    name, assignments, values = _sent_update(fields)
    sql = (
        f"UPDATE {name['table']} SET {assignments}, {name['provider_message_id']} = %s, "
        f"{name['sent_at']} = %s WHERE {name['id']} = %s AND {name['status']} IN (%s, %s)"
    )
    params = [(*values, m, at, i, Status.SENDING, Status.UNKNOWN) for i, m, at in rows]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)
        return cursor.rowcount


def _sent_events_from(source: str) -> tuple[str, list]:
    """The INSERT of a "sent" event for each row of `source` (the delivery table, or rows
    it returned), copied from the row's id, sent_at and status_reason; and its parameters."""
    event, delivery = DeliveryEvent._meta, Delivery._meta
    quote = connection.ops.quote_name
    columns = ", ".join(
        quote(event.get_field(name).column)
        for name in ("delivery", "kind", "at", "reason", "provider_event_id", "data")
    )
    id_column, at_column, reason_column = (
        quote(delivery.get_field(name).column) for name in ("id", "sent_at", "status_reason")
    )
    empty_json = "CAST(%s AS jsonb)" if connection.vendor == "postgresql" else "%s"
    sql = (
        f"INSERT INTO {quote(event.db_table)} ({columns}) "
        f"SELECT {id_column}, %s, {at_column}, {reason_column}, %s, {empty_json} FROM {source}"
    )
    return sql, [DeliveryEvent.Kind.SENT, "", "{}"]


def _copy_sent_events(ids: list[int]) -> None:
    """SQLite: the "sent" event of each of these just-written deliveries, copied from its
    row in one INSERT ... SELECT (building 10,000 event instances in Python was a fifth of
    a drain's time). PostgreSQL copies them in the outcomes' own statement."""
    delivery = Delivery._meta
    id_column = connection.ops.quote_name(delivery.pk.column)
    among, ids_param = any_of_sql(id_column, delivery.pk, ids, connection)
    sql, params = _sent_events_from(f"{connection.ops.quote_name(delivery.db_table)} WHERE {among}")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, ids_param])


def _failed_attempt(delivery: Delivery, error: ChannelError, *, now: datetime) -> str:
    if error.code in AMBIGUOUS_ERROR_CODES:
        _finish(
            delivery,
            now=now,
            kind="unknown",
            reason=f"provider may have accepted it ({error}): check before resending",
            status=Status.UNKNOWN,
            last_error=str(error),
        )
        return "unknown"
    final = error.permanent or delivery.attempts >= delivery.max_attempts
    if final:
        why = (
            "permanent error" if error.permanent else f"gave up after {delivery.attempts} attempts"
        )
        reason = f"{why}: {error}"
        suppress = getattr(error, "suppress", "")
        if suppress:  # the address itself will never take a message: as a bounce report
            tracking.suppress(
                address=delivery.address,
                channel=delivery.channel,
                reason=suppress,
                source=f"refused when sent (delivery {delivery.id}): {error}",
                by="dispatch",
                now=now,
            )
            reason = f"{reason} (address suppressed)"
        _finish(
            delivery,
            now=now,
            kind="failed",
            reason=reason,
            status=Status.FAILED,
            last_error=str(error),
        )
        record_event(
            "delivery.failed",
            {"delivery_id": delivery.id, "channel": delivery.channel, "reason": reason},
            idempotency_key=f"delivery.failed:{delivery.id}",
            now=now,
        )
        return "failed"
    delay = retry_delay(
        attempt=delivery.attempts,
        base=delivery.retry_base_seconds,
        cap=delivery.retry_max_seconds,
        key=delivery.idempotency_key,
        jitter=settings.DISPATCH_RETRY_JITTER,
    )
    if error.retry_after:
        delay = max(delay, error.retry_after)
    retry_at = now + timedelta(seconds=delay)
    _finish(
        delivery,
        now=now,
        kind="retry",
        reason=f"attempt {delivery.attempts}/{delivery.max_attempts} failed ({error}); "
        f"retry at {retry_at:%H:%M:%S}",
        status=Status.SCHEDULED,
        send_at=retry_at,
        last_error=str(error),
        claim_token=None,
    )
    return "retried"


def _skip_suppressed(claimed: list[Delivery], *, now: datetime, report: DispatchReport):
    """Drop claimed deliveries to suppressed addresses, recording the suppression's reason.
    One with a fallback channel and address goes by it instead (a stakeholder whose email
    bounced is still told by SMS); that copy's own address is checked when it is claimed."""
    by_channel = defaultdict(list)
    for delivery in claimed:
        by_channel[delivery.channel].append(delivery)
    keep = []
    for channel, group in by_channel.items():
        found = tracking.suppressions_for([d.address for d in group], channel)
        for delivery in group:
            suppression = found.get(delivery.address)
            if suppression is None:
                keep.append(delivery)
                continue
            source = f" ({suppression.source})" if suppression.source else ""
            reason = f"suppressed: {suppression.get_reason_display()}{source}"
            if delivery.fallback_channel and delivery.fallback_address:
                with transaction.atomic():
                    release([delivery], now=now, reason=reason)
                    made = fallback_create(delivery, now=now, reason=reason)
                report.add("deferred", made)
                continue
            _finish(
                delivery,
                now=now,
                kind="skipped",
                reason=reason,
                status=Status.SKIPPED,
                claim_token=None,
            )
            report.add("skipped")
    return keep


@dataclass(frozen=True)
class SendDecision:
    """What a send-time check says about one claimed delivery: 'defer' it until a time,
    'fallback' to its fallback channel, 'readdress' it (put back, due now, with `changes`:
    the next round checks its new address against the suppressions before sending), or
    'cancel' it. Always with the reason."""

    action: str
    reason: str
    until: datetime | None = None
    changes: dict | None = None


# Checks other apps register (from AppConfig.ready()) to re-decide a delivery at the moment
# it would be sent: check(deliveries, now) -> {delivery id: SendDecision}.
_send_time_checks: list = []
# Those registered `before_suppressions` run before the suppression list is read: they may
# re-address a delivery (a person's corrected address), whose old one may be suppressed.
_address_checks: list = []


def register_send_time_check(check, *, before_suppressions: bool = False) -> None:
    checks = _address_checks if before_suppressions else _send_time_checks
    if check not in checks:
        checks.append(check)


def address_decisions(deliveries: list[Delivery], now: datetime) -> dict:
    """What the checks registered `before_suppressions` would decide about these
    deliveries were they sent at `now` ({delivery id: SendDecision}): the delivery pages
    tell, before a delivery comes due, that it will be cancelled (its stakeholder is
    inactive) or go to a corrected address. Reads only."""
    decisions: dict = {}
    for check in _address_checks:
        undecided = [d for d in deliveries if d.id not in decisions]
        if undecided:
            decisions.update(check(undecided, now))
    return decisions


def _apply_send_time_checks(
    claimed, *, now: datetime, report: DispatchReport, checks=None
) -> list[Delivery]:
    """Each check, and what it decided written, in one transaction: a check may lock what it
    judges by (the cadence check locks the people it judges), so that two workers judging
    one person's messages at once take turns, the second seeing what the first decided."""
    for check in _send_time_checks if checks is None else checks:
        if not claimed:
            break
        with transaction.atomic():
            claimed = _apply_send_time_check(check, claimed, now=now, report=report)
    return claimed


def _apply_send_time_check(check, claimed, *, now: datetime, report: DispatchReport) -> list:
    decisions = check(claimed, now)
    keep = []
    for delivery in claimed:
        decision = decisions.get(delivery.id)
        if decision is None:
            keep.append(delivery)
        elif decision.action == "defer":
            report.add(
                "deferred",
                release([delivery], now=now, reason=decision.reason, send_at=decision.until),
            )
        elif decision.action == "readdress":
            with transaction.atomic():
                moved = release(
                    [delivery],
                    now=now,
                    reason=decision.reason,
                    send_at=now,
                    changes=decision.changes,
                )
                if moved:
                    _readdressed(delivery, now=now, reason=decision.reason)
            report.add("deferred", moved)
        elif decision.action == "fallback":
            with transaction.atomic():  # should the fallback fail, the claim is as it was
                release([delivery], now=now, reason=decision.reason)
                made = fallback_create(delivery, now=now, reason=decision.reason)
            report.add("deferred", made)
        else:
            _finish(
                delivery,
                now=now,
                kind="cancelled",
                reason=decision.reason,
                status=Status.CANCELLED,
                claim_token=None,
            )
            report.add("cancelled")
    return keep


# Listeners told of send outcomes: listener(delivery, outcome, now) -> True to halt the rest
# of that delivery's workflow run (the batch circuit breaker). Failures are told at once; a
# success only when its run failed earlier in this round (to reset a consecutive count).
_outcome_listeners: list = []
# Told at the end of each dispatch round of the runs whose successes were written:
# listener(workflow_run_ids, now).
_sent_listeners: list = []


def register_outcome_listener(listener) -> None:
    if listener not in _outcome_listeners:
        _outcome_listeners.append(listener)


def register_sent_listener(listener) -> None:
    if listener not in _sent_listeners:
        _sent_listeners.append(listener)


def _tell_listeners(delivery: Delivery, outcome: str, now: datetime) -> bool:
    halt = False
    for listener in _outcome_listeners:
        halt = bool(listener(delivery, outcome, now)) or halt
    return halt


# How long an accepted delivery may wait in the buffer for its bulk write: checked before
# each handover, so the wait can exceed it by the send in progress (a crash meanwhile leaves
# it "unknown" for reconciliation, never resent).
WRITE_WITHIN = timedelta(seconds=1)


class _SentBuffer:
    """Successes waiting for their bulk write: written once `size` are waiting, before a
    handover that would come WRITE_WITHIN or more after the oldest (`before_handover`), and
    always before anything else reads or changes their rows. The runs written are collected
    in `runs`: sent listeners hear of them once, at the end of the round (asking after every
    write whether a run had anything left made a long drain quadratic)."""

    def __init__(self, size: int, runs: set[int]):
        self.size = size
        self.handovers: list[Handover] = []
        self.runs = runs

    def add(self, handover: Handover, *, now: datetime) -> None:
        self.handovers.append(handover)
        if len(self.handovers) >= self.size:
            self.flush(now=now)

    def before_handover(self, at: datetime, *, now: datetime) -> None:
        """The next handover will be `at`: write first if the oldest would then have waited
        WRITE_WITHIN (a slow provider, or a paced sender's next slot)."""
        if self.handovers and at - self.handovers[0].at >= WRITE_WITHIN:
            self.flush(now=now)

    def flush(self, *, now: datetime) -> None:
        if not self.handovers:
            return
        handovers, self.handovers = self.handovers, []
        record_sent(handovers, now=now)
        self.runs.update(h.delivery.workflow_run_id for h in handovers)
        self.runs.discard(None)


def _tell_sent_listeners(runs: set[int], now: datetime) -> None:
    if runs:
        for listener in _sent_listeners:
            listener(set(runs), now)
        runs.clear()


def _sender_key(delivery: Delivery) -> str:
    return delivery.sender or pacing.sender_key(delivery.channel, delivery.payload)


def _schedule_slots(
    claimed: list[Delivery], *, now: datetime, senders: dict, paced_round: set[str]
) -> tuple[list[tuple[datetime, Delivery]], list[tuple[Delivery, datetime]]]:
    """The handover time of each claimed delivery under its sender's pace (earliest first),
    and the overdue ones that wait for a later round (with the time they wait until).

    A fresh delivery gets the sender's next free slot. A delivery put back earlier keeps its
    place in the sender's queue; once its slot has passed it goes in a burst of at most one
    second's worth of the rate (at least one), bursts one second (or one interval, if
    longer) apart within the horizon, and only if the sender handed nothing over earlier in
    this round; the sender's new slots start after its last burst. Handing every overdue
    delivery over at once (as before) burst past the rate whenever the dispatcher came
    late."""
    needing = defaultdict(list)
    late = defaultdict(list)
    for delivery in claimed:
        if delivery.paced_until and delivery.paced_until <= now:
            late[_sender_key(delivery)].append(delivery)
        else:
            needing[_sender_key(delivery)].append(delivery)
    horizon = now + timedelta(seconds=settings.PACING_HORIZON_SECONDS)
    slotted, waiting = [], []
    resume: dict[str, datetime] = {}
    for key, group in late.items():
        sender = senders[key]
        period = max(timedelta(seconds=1), pacing.interval(sender))
        size = max(1, int(sender.rate_per_second * period.total_seconds()))
        group.sort(key=lambda d: (d.paced_until, d.id))
        at = now + period if key in paced_round else now
        while group and at <= horizon:
            slotted.extend((at, delivery) for delivery in group[:size])
            group = group[size:]
            paced_round.add(key)
            at += period
        waiting.extend((delivery, at) for delivery in group)
        resume[key] = at
    for key, group in needing.items():
        slots = pacing.reserve_slots(key=key, count=len(group), now=resume.get(key, now))
        slotted.extend(zip(slots, group, strict=True))
    return sorted(slotted, key=lambda pair: (pair[0], pair[1].id)), waiting


def _expire_in_queue(delivery: Delivery, *, slot: datetime, now: datetime) -> None:
    _finish(
        delivery,
        now=now,
        kind="expired",
        reason=f"would expire in the queue: its sending slot {slot:%H:%M:%S} is not before "
        f"its expiry {delivery.expires_at:%H:%M:%S}",
        status=Status.EXPIRED,
    )


def _put_back_paced(slotted, *, now: datetime, senders: dict, report: DispatchReport) -> None:
    """Deliveries whose slot is beyond the horizon wait, holding their slot."""
    for slot, delivery in slotted:
        if delivery.expires_at and slot >= delivery.expires_at:
            _expire_in_queue(delivery, slot=slot, now=now)
            report.add("expired")
            continue
        sender = senders[_sender_key(delivery)]
        report.add(
            "deferred",
            release(
                [delivery],
                now=now,
                reason=f"paced: {sender.key} sends at most {sender.rate_per_second:g}/s; "
                f"its slot is {slot:%H:%M:%S}",
                send_at=slot,
                paced_until=slot,
            ),
        )


# How long a delivery whose checks before sending raised waits before it is tried again (it
# was left "sending" and then "unknown", for a person to reconcile, though nothing was sent).
CHECKS_FAILED_WAIT = timedelta(minutes=5)


def _plan_one_by_one(
    claimed: list[Delivery], *, now: datetime, report: DispatchReport, paced_round: set[str]
) -> tuple[dict, list[tuple[datetime, Delivery]]]:
    """`_plan_batch` for each delivery of a claim whose checks raised, so that one bad row
    holds only itself and the others go on (what the failed pass decided before it raised
    stands: those rows are no longer this claim's). A delivery whose checks raise again
    waits CHECKS_FAILED_WAIT, counted as an attempt, and fails once it has used its
    attempts (retry it from the admin once fixed)."""
    ours = set(
        Delivery.objects.filter(
            id__any_of=[d.id for d in claimed], status=Status.SENDING
        ).values_list("id", "claim_token")
    )
    senders: dict = {}
    slotted: list[tuple[datetime, Delivery]] = []
    for delivery in claimed:
        if (delivery.id, delivery.claim_token) not in ours:
            continue
        before = _planning_state(report, paced_round)
        try:
            with transaction.atomic():
                own_senders, own_slots = _plan_batch(
                    [delivery], now=now, report=report, paced_round=paced_round
                )
        except SoftTimeLimitExceeded:
            raise
        except Exception as error:
            logger.exception("dispatch: the checks before sending failed for %s", delivery.id)
            _restore_planning_state(before, report, paced_round)
            report.add(_checks_failed(delivery, error, now=now))
            continue
        senders.update(own_senders)
        slotted.extend(own_slots)
    return senders, sorted(slotted, key=lambda pair: (pair[0], pair[1].id))


def _planning_state(report: DispatchReport, paced_round: set[str]) -> tuple[dict, set[str]]:
    """What a planning pass changes besides the database (rolled back with it)."""
    return report.as_dict(), set(paced_round)


def _restore_planning_state(state, report: DispatchReport, paced_round: set[str]) -> None:
    counts, paced = state
    for name, value in counts.items():
        setattr(report, name, value)
    paced_round.clear()
    paced_round.update(paced)


def _checks_failed(delivery: Delivery, error: Exception, *, now: datetime) -> str:
    problem = f"Herald's checks before sending failed ({type(error).__name__}: {error})"
    if delivery.attempts >= delivery.max_attempts:
        _finish(
            delivery,
            now=now,
            kind="failed",
            reason=f"gave up after {delivery.attempts} attempts: {problem}; see the worker "
            "log, and retry it once fixed",
            status=Status.FAILED,
            last_error=problem,
        )
        return "failed"
    until = now + CHECKS_FAILED_WAIT
    _finish(
        delivery,
        now=now,
        kind="retry",
        reason=f"attempt {delivery.attempts}/{delivery.max_attempts}: {problem}; held until "
        f"{until:%H:%M:%S %Z}, see the worker log",
        status=Status.SCHEDULED,
        send_at=until,
        last_error=problem,
        claim_token=None,
    )
    return "deferred"


def _plan_batch(
    claimed: list[Delivery], *, now: datetime, report: DispatchReport, paced_round: set[str]
) -> tuple[dict, list[tuple[datetime, Delivery]]]:
    """What is left of a claim after suppressions and the send-time checks, each with its
    handover slot; deliveries behind their sender's schedule are put back for later."""
    claimed = _apply_send_time_checks(claimed, now=now, report=report, checks=_address_checks)
    claimed = _skip_suppressed(claimed, now=now, report=report)
    claimed = _apply_send_time_checks(claimed, now=now, report=report)
    keys = {_sender_key(d) for d in claimed}
    senders = pacing.senders_for(keys)
    slotted, waiting = _schedule_slots(claimed, now=now, senders=senders, paced_round=paced_round)
    behind = defaultdict(list)
    for delivery, until in waiting:
        behind[(_sender_key(delivery), until)].append(delivery)
    for (key, until), group in behind.items():
        sender = senders[key]
        reason = (
            f"paced: {sender.key} sends at most {sender.rate_per_second:g}/s and is behind "
            f"its schedule; next round at {until:%H:%M:%S}"
        )
        report.add("deferred", release(group, now=now, reason=reason, send_at=until))
    return senders, slotted


def _send_batch(
    claimed: list[Delivery],
    *,
    clock: Clock | ManualClock,
    breaker: str,
    gate: str,
    channels: dict,
    report: DispatchReport,
    paced_round: set[str],
    sent_runs: set[int],
) -> bool:
    """Send one claimed batch of one channel; returns False when the breaker opened.
    `paced_round` holds the senders that handed something over earlier in this round;
    `sent_runs` collects the runs whose successes were written.

    When the worker's soft time limit interrupts it (a long round, a slow provider), the
    accepted deliveries are written, the one being handed over is left "unknown"
    (`send_claimed`) and the rest of the claim is put back, unsent, before the task ends:
    caught like a provider error, it retried a delivery the provider already had, and the
    round went on until the hard limit killed the worker with its claim "sending"."""
    sent = _SentBuffer(settings.DISPATCH_WRITE_BATCH, sent_runs)
    try:
        return _plan_and_send(
            claimed,
            clock=clock,
            sent=sent,
            breaker=breaker,
            gate=gate,
            channels=channels,
            report=report,
            paced_round=paced_round,
        )
    except SoftTimeLimitExceeded:
        now = clock.now()
        sent.flush(now=now)
        release(claimed, now=now, reason="the worker's time limit ended its round first")
        raise


def _plan_and_send(
    claimed: list[Delivery],
    *,
    clock: Clock | ManualClock,
    sent: _SentBuffer,
    breaker: str,
    gate: str,
    channels: dict,
    report: DispatchReport,
    paced_round: set[str],
) -> bool:
    now = clock.now()
    try:
        senders, slotted = _plan_batch(claimed, now=now, report=report, paced_round=paced_round)
    except SoftTimeLimitExceeded:
        raise
    except Exception:  # a bug or bad data in the checks: find the row, hold only it
        logger.exception("dispatch: the checks before sending failed; checking one by one")
        senders, slotted = _plan_one_by_one(
            claimed, now=now, report=report, paced_round=paced_round
        )
    horizon = timedelta(seconds=settings.PACING_HORIZON_SECONDS)
    paused: dict[str, datetime] = {}
    halted_runs: set[int] = set()
    # Runs with failures in a row to clear: a success is told to the listeners (the batch
    # breaker resets) only for these, counted from earlier claims and rounds too.
    failing_runs = _runs_with_failures({d.workflow_run_id for _, d in slotted})
    # Only touch the breaker row on success when there is a failure count to clear.
    breaker_dirty = gate == "trial" or breakers.has_failures(breaker)
    alive = _ClaimKeepAlive(slotted, at=now)
    for index, (slot, delivery) in enumerate(slotted):
        alive.stamp(clock.now())
        sender = senders[_sender_key(delivery)]
        if delivery.workflow_run_id in halted_runs:
            release([delivery], now=now, reason="its run was halted: resume or cancel it")
            report.add("deferred")
            continue
        if sender.key in paused:
            report.add(
                "deferred",
                release(
                    [delivery],
                    now=now,
                    reason=f"paced: provider asked {sender.key} to wait until "
                    f"{paused[sender.key]:%H:%M:%S}",
                    send_at=paused[sender.key],
                ),
            )
            continue
        if delivery.expires_at and slot >= delivery.expires_at:
            _expire_in_queue(delivery, slot=slot, now=now)
            report.add("expired")
            continue
        if slot > now + horizon:
            sent.flush(now=clock.now())
            _put_back_paced(slotted[index:], now=now, senders=senders, report=report)
            return True
        current = clock.now()
        sent.before_handover(max(slot, current), now=current)
        clock.sleep_until(slot)
        handed_at = clock.now()
        paced_round.add(sender.key)
        outcome, result = send_claimed(
            delivery, now=handed_at, channels=channels, max_queue_hours=sender.max_queue_hours
        )
        report.add(outcome)
        if isinstance(result, Handover):
            sent.add(result, now=handed_at)
            if delivery.workflow_run_id in failing_runs:
                sent.flush(now=handed_at)
                failing_runs.discard(delivery.workflow_run_id)
                _tell_listeners(delivery, outcome, handed_at)
            if breaker_dirty:
                sent.flush(now=handed_at)
                breakers.record_success(breaker, now=handed_at)
                breaker_dirty = False
            continue
        error = result
        if delivery.workflow_run_id:
            failing_runs.add(delivery.workflow_run_id)
        sent.flush(now=handed_at)
        if _tell_listeners(delivery, outcome, handed_at):
            halted_runs.add(delivery.workflow_run_id)
        if error.retry_after:
            paused[sender.key] = handed_at + timedelta(seconds=error.retry_after)
            pacing.pause(key=sender.key, until=paused[sender.key])
        if not error.permanent:
            breaker_dirty = True
            if breakers.record_failure(breaker, now=handed_at, error=str(error)):
                rest = [d for _, d in slotted[index + 1 :]]
                reason = f"breaker {breaker} open"
                report.add("deferred", release(rest, now=handed_at, reason=reason))
                return False
    sent.flush(now=clock.now())
    return True


class _ClaimKeepAlive:
    """A claim that a slow provider makes last long has its unsent rows' claim time
    renewed every quarter of DISPATCH_SENDING_TIMEOUT_SECONDS: the sweep marks rows
    'sending' for longer than that "unknown" (their worker stopped), and took the tail of
    a live claim of 200 at 3 s a message for one, which its worker then sent all the same.
    A fast claim never writes."""

    def __init__(self, slotted: list, *, at: datetime):
        self.tokens = {delivery.claim_token for _, delivery in slotted}
        self.every = timedelta(seconds=settings.DISPATCH_SENDING_TIMEOUT_SECONDS / 4)
        self.last = at

    def stamp(self, now: datetime) -> None:
        if now - self.last < self.every or not self.tokens:
            return
        Delivery.objects.filter(claim_token__in=self.tokens, status=Status.SENDING).update(
            claimed_at=now
        )
        self.last = now


def _runs_with_failures(run_ids: set[int | None]) -> set[int]:
    """Of these runs, those whose last sends failed (a batch's breaker count is not 0)."""
    run_ids.discard(None)
    if not run_ids:
        return set()
    return set(
        WorkflowRun.objects.filter(id__in=run_ids, consecutive_failures__gt=0).values_list(
            "id", flat=True
        )
    )


def dispatch_due(
    *, now: datetime, limit: int | None = None, clock: Clock | ManualClock | None = None
) -> DispatchReport:
    """Sweep stuck and expired rows, then send due deliveries channel by channel in batches
    until none are due (or `limit` have been handled)."""
    clock = clock or Clock(now)
    report = DispatchReport(unknown=mark_stuck_unknown(now=now), expired=expire_overdue(now=now))
    frozen = frozen_filter(active_switches())
    if frozen is not None:
        report.frozen = _due(now=now, frozen=None).filter(frozen).count()
    channels: dict = {}
    try:
        last = _dispatch_channels(
            report, channels=channels, now=now, limit=limit, clock=clock, frozen=frozen
        )
        if last is not None and last != frozen:  # a switch turned on during the round
            report.frozen = _due(now=now, frozen=None).filter(last).count()
    finally:
        for channel in channels.values():
            try:
                channel.close()
            except Exception:  # the round's outcome is written; do not hide its own error
                logger.exception("could not close the %s channel", channel.name)
    return report


def _dispatch_channels(
    report: DispatchReport,
    *,
    channels: dict,
    now: datetime,
    limit: int | None,
    clock: Clock | ManualClock,
    frozen: Q | None,
) -> Q | None:
    """Channel by channel: claim and send batches until none are due (or `limit` have been
    handled). `channels` collects the channel objects used, for the caller to close. The
    kill switches are read again before every claim after the first (`frozen` is what the
    caller read): one turned on during a long round holds what is not yet claimed. Returns
    the switches' filter as last read."""
    handled = 0
    first_claim = True
    paced_round: set[str] = set()
    sent_runs: set[int] = set()
    for channel in Channel.values:
        breaker = breakers.breaker_key(channel, provider_of(channel))
        gate = breakers.gate(
            breaker,
            now=now,
            anything_due=lambda channel=channel, frozen=frozen: (
                _due(now=now, frozen=frozen).filter(channel=channel).exists()
            ),
        )
        if gate == "open":
            reroute_to_fallback(channel=channel, now=now, frozen=frozen, report=report)
            report.add("breaker_held", _due(now=now, frozen=frozen).filter(channel=channel).count())
            continue
        look_first = True  # a channel's first claim; after a full one, more is likely due
        claim_size = settings.DISPATCH_BATCH_SIZE
        while limit is None or handled < limit:
            size = 1 if gate == "trial" else claim_size
            size = size if limit is None else min(size, limit - handled)
            if not first_claim:
                frozen = frozen_filter(active_switches())
            first_claim = False
            started = clock.now()
            claimed = claim_due(
                now=started, limit=size, channel=channel, frozen=frozen, look_first=look_first
            )
            look_first = False
            handled += len(claimed)
            closed = _send_batch(
                claimed,
                clock=clock,
                breaker=breaker,
                gate=gate,
                channels=channels,
                report=report,
                paced_round=paced_round,
                sent_runs=sent_runs,
            )
            if not closed or gate == "trial" or len(claimed) < size:
                break
            claim_size = next_claim_size(
                claim_size, seconds=(clock.now() - started).total_seconds()
            )
        _tell_sent_listeners(sent_runs, clock.now())
    return frozen


def next_claim_size(size: int, *, seconds: float) -> int:
    """The size of a round's next claim, after a full claim of `size` that took `seconds`
    to claim, send and write: twice as big when it took under half a second (up to
    DISPATCH_MAX_BATCH_SIZE), back to DISPATCH_BATCH_SIZE when it took over two."""
    base = settings.DISPATCH_BATCH_SIZE
    if seconds < 0.5:
        return max(base, min(size * 2, settings.DISPATCH_MAX_BATCH_SIZE))
    return base if seconds > 2 else size


def reroute_to_fallback(
    *, channel: str, now: datetime, frozen: Q | None, report: DispatchReport
) -> None:
    """While a provider's breaker is open, due deliveries that name a fallback channel go
    there instead (email → SMS); the rest wait for the breaker to close. The address checks
    a claim runs first (`address_decisions`) are applied here too, before a copy is made: a
    delivery to a stakeholder marked inactive or deleted is cancelled, saying why; one whose
    addresses changed is re-addressed first, and its copy goes to the fallback address the
    stakeholder has now (or, with none left, it waits for the breaker like the rest)."""
    breaker = breakers.breaker_key(channel, provider_of(channel))
    due = _due(now=now, frozen=frozen).filter(channel=channel).exclude(fallback_channel="")
    batch = list(due.order_by("send_at", "id")[: settings.DISPATCH_BATCH_SIZE])
    decisions = address_decisions(batch, now)
    for original in batch:
        decision = decisions.get(original.id)
        reason = f"breaker {breaker} open"
        if decision is not None and decision.action == "cancel":
            report.add("cancelled", _cancel_waiting(original, now=now, reason=decision.reason))
            continue
        if decision is not None and decision.action == "readdress":
            if not _readdress_waiting(original, now=now, decision=decision):
                continue
            if not original.fallback_channel:
                continue  # no fallback left: it waits for the breaker
        elif decision is not None:  # "fallback": no address on this channel now
            reason = decision.reason
        other = breakers.breaker_key(
            original.fallback_channel, provider_of(original.fallback_channel)
        )
        if breakers.get_breaker(other).state == breakers.State.OPEN:
            continue
        report.add("deferred", fallback_create(original, now=now, reason=reason))


def _cancel_waiting(delivery: Delivery, *, now: datetime, reason: str) -> int:
    """Cancel a scheduled (unclaimed) delivery, unless someone else decided it first."""
    with transaction.atomic():
        done = Delivery.objects.filter(id=delivery.id, status=Status.SCHEDULED).update(
            status=Status.CANCELLED, status_reason=reason[:300], updated_at=now
        )
        if done:
            DeliveryEvent.objects.create(
                delivery=delivery, kind="cancelled", at=now, reason=reason[:300]
            )
    return done


def _readdressed(delivery: Delivery, *, now: datetime, reason: str) -> None:
    """The event of a delivery re-addressed by a send-time check (claimed or waiting)."""
    DeliveryEvent.objects.create(
        delivery=delivery, kind=DeliveryEvent.Kind.READDRESSED, at=now, reason=reason[:300]
    )


def _readdress_waiting(delivery: Delivery, *, now: datetime, decision: SendDecision) -> bool:
    """Write a 'readdress' decision's changes on a scheduled (unclaimed) delivery, and on
    the object given; False when someone else decided it first."""
    with transaction.atomic():
        done = Delivery.objects.filter(id=delivery.id, status=Status.SCHEDULED).update(
            status_reason=decision.reason[:300], updated_at=now, **(decision.changes or {})
        )
        if done:
            _readdressed(delivery, now=now, reason=decision.reason)
    for name, value in (decision.changes or {}).items():
        setattr(delivery, name, value)
    delivery.status_reason = decision.reason[:300]
    return bool(done)


def fallback_create(original: Delivery, *, now: datetime, reason: str) -> int:
    """Replace a scheduled delivery by one on its fallback channel (idempotent)."""
    with transaction.atomic():
        if not Delivery.objects.filter(id=original.id, status=Status.SCHEDULED).update(
            status=Status.SKIPPED,
            status_reason=f"{reason}: sent by {original.fallback_channel} instead"[:300],
            updated_at=now,
        ):
            return 0
        fallback, _ = Delivery.objects.get_or_create(
            idempotency_key=f"{original.idempotency_key}:fallback:{original.fallback_channel}",
            defaults={
                "notification_id": original.notification_id,
                "workflow_run_id": original.workflow_run_id,
                "recipient_key": original.recipient_key,
                "channel": original.fallback_channel,
                "address": original.fallback_address,
                "subject": original.subject,
                "body": original.body,
                "send_at": now,
                "expires_at": original.expires_at,
                "max_attempts": original.max_attempts,
                "retry_base_seconds": original.retry_base_seconds,
                "retry_max_seconds": original.retry_max_seconds,
                "fallback_of": original,
                "status_reason": f"fallback for delivery {original.id}: {reason}"[:300],
                "created_at": now,
            },
        )
        DeliveryEvent.objects.create(
            delivery=original, kind="skipped", at=now, reason=f"{reason}: fallback {fallback.id}"
        )
    return 1


def next_due_in(*, now: datetime) -> float | None:
    """Seconds until dispatch could next send a scheduled delivery (None: none it could).

    Deliveries held by a kill switch or a halted run wait for a person and are left out
    (counted, a delivery held for an hour woke the worker every second of it); a channel
    behind an open provider breaker counts from its trial call, except its rows with a
    fallback channel that may send (they are moved there when due). One indexed read of the
    first waiting row, and two per channel whose breaker is open."""
    waiting = Delivery.objects.filter(status=Status.SCHEDULED)
    halted = halted_run_ids()
    if halted:
        waiting = waiting.exclude(workflow_run_id__in=halted)
    frozen = frozen_filter(active_switches())
    if frozen is not None:
        waiting = waiting.exclude(frozen)
    held_until = {
        breaker.provider: breakers.trial_at(breaker, now=now)
        for breaker in ProviderBreaker.objects.exclude(state=ProviderBreaker.State.CLOSED)
    }

    def trial_of(channel: str):
        return held_until.get(breakers.breaker_key(channel, provider_of(channel)))

    held = [channel for channel in Channel.values if trial_of(channel) is not None]
    times = []
    # Channels whose breaker is closed: their first waiting row.
    first = waiting.exclude(channel__in=held).order_by("send_at")
    times.append(first.values_list("send_at", flat=True).first())
    for channel in held:
        on_it = waiting.filter(channel=channel).order_by("send_at")
        # Its first row waits for the trial call; a row with a fallback whose breaker is
        # closed goes there when due (reroute_to_fallback).
        first_time = on_it.values_list("send_at", flat=True).first()
        if first_time is not None:
            times.append(max(first_time, trial_of(channel)))
        rerouted = on_it.exclude(fallback_channel="").exclude(fallback_channel__in=held)
        times.append(rerouted.values_list("send_at", flat=True).first())
    times = [t for t in times if t is not None]
    return max(0.0, (min(times) - now).total_seconds()) if times else None
