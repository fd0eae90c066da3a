"""Dispatch: claim due deliveries, send them outside any transaction, record the outcome.

Claims are conditional updates (plus SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL), so
any number of workers may run this at once and each delivery is handed to a provider at most
once. A delivery left "sending" by a crash is marked "unknown" for a human to reconcile; it
is never resent blindly.
"""

import hashlib
import logging
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q

from notifications.channels import ChannelError, OutgoingMessage, get_channel
from notifications.events import record_event
from notifications.models import Delivery, DeliveryEvent

logger = logging.getLogger(__name__)
Status = Delivery.Status


@dataclass
class DispatchReport:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    expired: int = 0
    deferred: int = 0
    unknown: int = 0

    def add(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)

    def as_dict(self) -> dict:
        return asdict(self)


def retry_delay(*, attempt: int, base: float, cap: float, key: str, jitter: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): base * 2^(attempt-1),
    at most `cap`, stretched by up to `jitter` (a fraction) so a burst of failures does not
    retry in lockstep. The jitter is drawn from the key and attempt, so it is reproducible."""
    delay = min(cap, base * 2 ** (attempt - 1))
    digest = hashlib.sha256(f"{key}:{attempt}".encode()).digest()
    spread = int.from_bytes(digest[:4], "big") / 0xFFFFFFFF
    return min(cap, delay * (1 + jitter * spread))


def mark_stuck_unknown(*, now: datetime) -> int:
    """Deliveries 'sending' for longer than the timeout: the provider may or may not have
    them. Mark them unknown, for reconciliation, instead of sending again."""
    cutoff = now - timedelta(seconds=settings.DISPATCH_SENDING_TIMEOUT_SECONDS)
    stuck = Delivery.objects.filter(status=Status.SENDING, claimed_at__lt=cutoff)
    ids = list(stuck.values_list("id", flat=True))
    if not ids:
        return 0
    reason = "worker stopped while sending: check the provider before resending"
    with transaction.atomic():
        count = stuck.filter(id__in=ids).update(
            status=Status.UNKNOWN, status_reason=reason, updated_at=now
        )
        DeliveryEvent.objects.bulk_create(
            [DeliveryEvent(delivery_id=i, kind="unknown", at=now, reason=reason) for i in ids]
        )
    return count


def expire_overdue(*, now: datetime) -> int:
    overdue = Delivery.objects.filter(status=Status.SCHEDULED, expires_at__lte=now)
    ids = list(overdue.values_list("id", flat=True))
    if not ids:
        return 0
    reason = "expired before it could be sent"
    with transaction.atomic():
        count = overdue.filter(id__in=ids).update(
            status=Status.EXPIRED, status_reason=reason, updated_at=now
        )
        DeliveryEvent.objects.bulk_create(
            [DeliveryEvent(delivery_id=i, kind="expired", at=now, reason=reason) for i in ids]
        )
    return count


def claim_due(*, now: datetime, limit: int) -> list[Delivery]:
    """Take up to `limit` due deliveries for this worker; others get different rows."""
    token = uuid.uuid4()
    due = (
        Delivery.objects.filter(status=Status.SCHEDULED, send_at__lte=now)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .order_by("send_at", "id")
    )
    with transaction.atomic():
        ids = list(due.select_for_update(skip_locked=True).values_list("id", flat=True)[:limit])
        if not ids:
            return []
        Delivery.objects.filter(id__in=ids, status=Status.SCHEDULED).update(
            status=Status.SENDING,
            claim_token=token,
            claimed_at=now,
            attempts=F("attempts") + 1,
            updated_at=now,
        )
    return list(Delivery.objects.filter(claim_token=token, status=Status.SENDING).order_by("id"))


def _message(delivery: Delivery) -> OutgoingMessage:
    return OutgoingMessage(
        channel=delivery.channel,
        to=delivery.address,
        idempotency_key=delivery.idempotency_key,
        subject=delivery.subject,
        body=delivery.body,
        html_body=delivery.html_body,
        payload=delivery.payload,
        status_callback=status_callback_url(delivery),
    )


def status_callback_url(delivery: Delivery) -> str:
    if delivery.channel == "sms":
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


def send_claimed(delivery: Delivery, *, now: datetime, channels: dict | None = None) -> str:
    """Hand one claimed delivery to its channel; returns the outcome name for the report.
    `channels` caches one channel object per channel name for a whole batch."""
    channels = {} if channels is None else channels
    try:
        if delivery.channel not in channels:
            channels[delivery.channel] = get_channel(delivery.channel)
        channel = channels[delivery.channel]
        provider_id = channel.send(_message(delivery))
    except ChannelError as error:
        return _failed_attempt(delivery, error, now=now)
    except Exception as error:  # a bug or a library surprise: retried like a transient error
        logger.exception("delivery %s: unexpected error while sending", delivery.id)
        return _failed_attempt(delivery, ChannelError(f"{type(error).__name__}: {error}"), now=now)
    _finish(
        delivery,
        now=now,
        kind="sent",
        reason=f"accepted by {channel.provider}",
        status=Status.SENT,
        provider=channel.provider,
        provider_message_id=provider_id,
        sent_at=now,
        last_error="",
    )
    return "sent"


# The provider answered "OK" with a body we cannot read: it may well have taken the message,
# so sending again could send twice. A human reconciles instead.
AMBIGUOUS_ERROR_CODES = {"malformed_response"}


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


def dispatch_due(*, now: datetime, limit: int | None = None) -> DispatchReport:
    """Sweep stuck and expired rows, then send due deliveries in batches until none are due
    (or `limit` have been handled)."""
    report = DispatchReport(unknown=mark_stuck_unknown(now=now), expired=expire_overdue(now=now))
    batch = settings.DISPATCH_BATCH_SIZE
    handled = 0
    channels: dict = {}
    while limit is None or handled < limit:
        size = batch if limit is None else min(batch, limit - handled)
        claimed = claim_due(now=now, limit=size)
        for delivery in claimed:
            report.add(send_claimed(delivery, now=now, channels=channels))
        handled += len(claimed)
        if len(claimed) < size:
            break
    return report


def next_due_in(*, now: datetime) -> float | None:
    """Seconds until the next scheduled delivery is due (None: nothing scheduled)."""
    upcoming = (
        Delivery.objects.filter(status=Status.SCHEDULED)
        .order_by("send_at")
        .values_list("send_at", flat=True)
        .first()
    )
    return None if upcoming is None else max(0.0, (upcoming - now).total_seconds())
