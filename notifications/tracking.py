"""Tracking: what providers tell us happened to a delivery after we handed it over, and the
suppression list those reports (and unsubscribes) feed.

Providers retry webhooks and deliver them out of order, so every report is applied once
(per provider event id) and moves a delivery's status forward only: a late "delivered"
never hides an "opened". A report for a message id Herald does not know yet (the webhook
beat the send's own bookkeeping) is kept and replayed by `match_unmatched`.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from notifications.models import (
    HAS_MESSAGE_ID,
    AuditEntry,
    Channel,
    Delivery,
    DeliveryEvent,
    ProviderReport,
    Suppression,
    UnmatchedProviderEvent,
)

Status = Delivery.Status
logger = logging.getLogger(__name__)
Kind = DeliveryEvent.Kind

# How far along a delivery is. Provider reports only ever move it to a higher rank.
RANK = {
    Status.SCHEDULED: 0,
    Status.SENDING: 0,
    Status.UNKNOWN: 0,
    Status.SENT: 1,
    Status.DELIVERED: 2,
    Status.OPENED: 3,
    Status.CLICKED: 4,
}
PROGRESS_KINDS = {Kind.SENT, Kind.DELIVERED, Kind.OPENED, Kind.CLICKED}
# A bounce or failure explains a message that was not (yet) seen arriving; once the person
# opened it, a late failure report must not say otherwise.
FAILURE_FROM = (Status.SENDING, Status.UNKNOWN, Status.SENT, Status.DELIVERED)
# A complaint proves the message arrived, whatever we had heard so far.
COMPLAINT_FROM = (
    Status.SENDING,
    Status.UNKNOWN,
    Status.SENT,
    Status.DELIVERED,
    Status.OPENED,
    Status.CLICKED,
)
# Kinds that put the address on the suppression list unless data["suppress"] says otherwise.
SUPPRESSING_KINDS = {
    Kind.BOUNCED: Suppression.Reason.BOUNCE,
    Kind.COMPLAINED: Suppression.Reason.COMPLAINT,
    Kind.UNSUBSCRIBED: Suppression.Reason.UNSUBSCRIBE,
}
# A batch just written looks for reports kept as unmatched this recently (generous: the
# report came after the handover, seconds ago, but the web and worker clocks may differ).
EARLY_REPORTS_WITHIN = timedelta(hours=1)


def receive_provider_events(reports: list[dict], *, now: datetime) -> int:
    """Take provider reports from a webhook whose signature was checked. With
    TRACKING_APPLY="celery" (production) they are stored and a worker applies them, so a
    flood of callbacks is answered at once; "inline" applies them in the request."""
    for report in reports:
        if report["kind"] not in Kind.values or not report["provider_message_id"]:
            raise ValueError(f"unusable provider report: {report!r}")
    if settings.TRACKING_APPLY == "inline":
        for report in reports:
            apply_provider_event(**report, now=now)
        return len(reports)
    ProviderReport.objects.bulk_create(
        [ProviderReport(received_at=now, **report) for report in reports]
    )
    transaction.on_commit(_kick_reports)
    return len(reports)


def _kick_reports() -> None:
    from notifications.tasks import apply_reports_task

    try:
        apply_reports_task.delay()
    except Exception as error:  # the broker is down: the minute sweep applies them
        logger.warning("could not kick the report worker (%s); the sweep will apply them", error)


REPORT_CLAIM_TIMEOUT = timedelta(minutes=15)
REPORT_MAX_ATTEMPTS = 5


def apply_pending_reports(*, now: datetime, limit: int = 1000) -> int:
    """Apply stored reports in arrival order; each is claimed once, whoever runs this. A
    claim its worker never finished (the worker died) is taken again after
    REPORT_CLAIM_TIMEOUT. Each report is applied and marked in a transaction of its own: one
    that raises is put back for the next sweep (given up, "failed", after
    REPORT_MAX_ATTEMPTS), and the others of the claim are applied all the same."""
    token = uuid.uuid4()
    claimable = Q(claim_token__isnull=True) | Q(claimed_at__lt=now - REPORT_CLAIM_TIMEOUT)
    with transaction.atomic():
        ids = list(
            ProviderReport.objects.filter(claimable, processed_at__isnull=True)
            .order_by("id")
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)[:limit]
        )
        ProviderReport.objects.filter(claimable, id__in=ids, processed_at__isnull=True).update(
            claim_token=token, claimed_at=now
        )
    applied = 0
    for report in ProviderReport.objects.filter(claim_token=token).order_by("id"):
        try:
            with transaction.atomic():
                outcome = apply_provider_event(
                    provider=report.provider,
                    provider_message_id=report.provider_message_id,
                    kind=report.kind,
                    provider_event_id=report.provider_event_id,
                    at=report.at,
                    data=report.data,
                    now=now,
                )
                ProviderReport.objects.filter(id=report.id, claim_token=token).update(
                    processed_at=now, outcome=outcome
                )
        except Exception:
            logger.exception("tracking report %s could not be applied", report.id)
            given_up = report.attempts + 1 >= REPORT_MAX_ATTEMPTS
            ProviderReport.objects.filter(id=report.id, claim_token=token).update(
                attempts=F("attempts") + 1,
                claim_token=None,
                claimed_at=None,
                **({"processed_at": now, "outcome": "failed"} if given_up else {}),
            )
            continue
        applied += 1
    return applied


def apply_provider_event(
    *,
    provider: str,
    provider_message_id: str,
    kind: str,
    provider_event_id: str,
    at: datetime,
    data: dict,
    now: datetime,
) -> str:
    """Record one provider report and move the delivery forward; returns the outcome:
    "recorded", "duplicate" (seen before), "unmatched" (kept for later) or
    "unmatched_duplicate".

    `data` is stored with the event. Two keys are understood: "reason" (a short text for the
    event and the delivery's status reason) and "suppress" (a Suppression reason, or "" to
    not suppress, overriding the default for the kind: a soft bounce passes "")."""
    if kind not in Kind.values:
        raise ValueError(f"unknown delivery event kind {kind!r}")
    if not provider_message_id:
        raise ValueError("a provider event needs the provider's message id")
    delivery = _find_delivery(provider, provider_message_id)
    if delivery is None:
        return _keep_unmatched(
            provider=provider,
            provider_message_id=provider_message_id,
            kind=kind,
            provider_event_id=provider_event_id,
            at=at,
            data=data,
            now=now,
        )
    return _apply(
        delivery,
        provider=provider,
        kind=kind,
        provider_event_id=provider_event_id,
        at=at,
        data=data,
        now=now,
    )


def match_unmatched(delivery: Delivery, *, now: datetime | None = None) -> int:
    """Replay the reports that arrived before `delivery` recorded its provider id; returns
    how many were applied. Safe to call more than once: each report is applied once."""
    if not delivery.provider_message_id:
        return 0
    now = now or timezone.now()
    waiting = UnmatchedProviderEvent.objects.filter(
        provider_message_id=delivery.provider_message_id, matched_delivery__isnull=True
    ).order_by("at", "id")
    applied = 0
    for stored in waiting:
        with transaction.atomic():
            claimed = UnmatchedProviderEvent.objects.filter(
                id=stored.id, matched_delivery__isnull=True
            ).update(matched_delivery=delivery)
            if not claimed:  # another caller replayed it first
                continue
            _apply(
                delivery,
                provider=stored.provider,
                kind=stored.kind,
                provider_event_id=stored.provider_event_id,
                at=stored.at,
                data=stored.data,
                now=now,
            )
        applied += 1
    return applied


def match_unmatched_many(deliveries: list[Delivery], *, now: datetime) -> int:
    """`match_unmatched` for a batch of just-sent deliveries, with one query when (as
    nearly always) no report received lately is waiting: their ids are only looked up when
    one is (for 1,000 deliveries, the lookup of their ids took 7 ms on SQLite). A report for
    a message comes after its handover, seconds before this; reports kept longer (for ids
    that are not Herald's, say) would otherwise make every batch look. Anything missed is
    replayed by `match_pending`, the sweep."""
    ids = [str(d.provider_message_id) for d in deliveries if d.provider_message_id]
    recent = UnmatchedProviderEvent.objects.filter(
        matched_delivery__isnull=True, received_at__gte=now - EARLY_REPORTS_WITHIN
    )
    if not ids or not recent.exists():
        return 0
    waiting = set(
        recent.filter(provider_message_id__any_of=ids).values_list("provider_message_id", flat=True)
    )
    return sum(
        match_unmatched(d, now=now) for d in deliveries if str(d.provider_message_id) in waiting
    )


def match_pending(*, now: datetime, limit: int = 500) -> int:
    """Replay waiting reports whose delivery has since recorded its provider id; returns how
    many were applied. A sweep for the narrow race where a report is stored as unmatched
    just after the send's own `match_unmatched` call looked for it."""
    waiting_ids = (
        UnmatchedProviderEvent.objects.filter(matched_delivery__isnull=True)
        .values_list("provider_message_id", flat=True)
        .distinct()[:limit]
    )
    deliveries = Delivery.objects.filter(HAS_MESSAGE_ID, provider_message_id__in=list(waiting_ids))
    return sum(match_unmatched(delivery, now=now) for delivery in deliveries)


def _find_delivery(provider: str, provider_message_id: str) -> Delivery | None:
    """The delivery the provider means. Ids are the provider's, so a clash between providers
    is unlikely; when it happens the delivery sent through that provider wins."""
    found = Delivery.objects.filter(HAS_MESSAGE_ID, provider_message_id=provider_message_id)
    candidates = list(found[:5])
    for delivery in candidates:
        if delivery.provider == provider:
            return delivery
    return candidates[0] if candidates else None


def _keep_unmatched(
    *,
    provider: str,
    provider_message_id: str,
    kind: str,
    provider_event_id: str,
    at: datetime,
    data: dict,
    now: datetime,
) -> str:
    """Store a report nobody can place yet: answering the webhook with an error would only
    make the provider retry something we cannot use either."""
    if (
        provider_event_id
        and UnmatchedProviderEvent.objects.filter(
            provider=provider,
            provider_message_id=provider_message_id,
            provider_event_id=provider_event_id,
        ).exists()
    ):
        return "unmatched_duplicate"
    UnmatchedProviderEvent.objects.create(
        provider=provider,
        provider_message_id=provider_message_id,
        kind=kind,
        provider_event_id=provider_event_id,
        at=at,
        data=data,
        received_at=now,
    )
    return "unmatched"


def _apply(
    delivery: Delivery,
    *,
    provider: str,
    kind: str,
    provider_event_id: str,
    at: datetime,
    data: dict,
    now: datetime,
) -> str:
    """Write the event once, then the status and suppression it implies, all or nothing."""
    reason = str(data.get("reason") or f"{kind} reported by {provider}")[:300]
    with transaction.atomic():
        seen = delivery.events.filter(provider_event_id=provider_event_id)
        if provider_event_id and seen.exists():
            return "duplicate"
        try:
            with transaction.atomic():
                DeliveryEvent.objects.create(
                    delivery=delivery,
                    kind=kind,
                    at=at,
                    reason=reason,
                    provider_event_id=provider_event_id,
                    data=data,
                )
        except IntegrityError:  # the same webhook, retried concurrently
            return "duplicate"
        _move_status(delivery, kind=kind, at=at, reason=reason, now=now)
        suppression_reason = data.get("suppress", SUPPRESSING_KINDS.get(kind, ""))
        if suppression_reason:
            suppress(
                address=delivery.address,
                channel=delivery.channel,
                reason=suppression_reason,
                source=f"{provider} {kind} event {provider_event_id or '-'} "
                f"for message {delivery.provider_message_id}",
                by=f"webhook:{provider}",
                now=now,
            )
    return "recorded"


def _move_status(delivery: Delivery, *, kind: str, at: datetime, reason: str, now: datetime):
    """A conditional update, so a concurrent report cannot move the status backwards."""
    fields: dict = {"status": kind, "status_reason": reason, "updated_at": now}
    if kind in PROGRESS_KINDS:
        allowed_from = [status for status, rank in RANK.items() if rank < RANK[kind]]
        fields["sent_at"] = Coalesce("sent_at", Value(at))
    elif kind in (Kind.BOUNCED, Kind.FAILED):
        allowed_from = FAILURE_FROM
        fields["last_error"] = reason
    elif kind == Kind.COMPLAINED:
        allowed_from = COMPLAINT_FROM
    else:  # queued, deferred, unsubscribed, ...: worth recording, not a state change
        return
    Delivery.objects.filter(id=delivery.id, status__in=allowed_from).update(**fields)


def normalize_address(address: str, channel: str) -> str:
    """Email addresses are compared case-insensitively in practice; numbers are E.164."""
    address = address.strip()
    return address.lower() if channel == Channel.EMAIL else address


def suppress(
    *, address: str, channel: str, reason: str, source: str, by: str, now: datetime
) -> Suppression:
    """Put an address on the suppression list; an existing entry (and its first reason)
    stays as it is, so repeated bounces or unsubscribes are harmless."""
    if reason not in Suppression.Reason.values:
        raise ValueError(f"unknown suppression reason {reason!r}")
    suppression, _ = Suppression.objects.get_or_create(
        address=normalize_address(address, channel),
        channel=channel,
        defaults={"reason": reason, "source": source[:300], "created_by": by, "created_at": now},
    )
    return suppression


def unsuppress(suppressions, *, by: str, now: datetime) -> int:
    """Lift suppressions (a person who asked again, a mailbox that works again), each with
    an audit entry saying who lifted it and what it was. Returns how many."""
    with transaction.atomic():
        lifted = list(suppressions)
        AuditEntry.objects.bulk_create(
            [
                AuditEntry(
                    at=now,
                    by=by,
                    action="suppression_lifted",
                    target=f"suppression:{s.channel}:{s.address}"[:200],
                    detail={
                        "reason": s.reason,
                        "source": s.source,
                        "created_by": s.created_by,
                        "created_at": s.created_at.isoformat(),
                    },
                )
                for s in lifted
            ]
        )
        Suppression.objects.filter(pk__in=[s.pk for s in lifted]).delete()
    return len(lifted)


def is_suppressed(address: str, channel: str) -> Suppression | None:
    return Suppression.objects.filter(
        address=normalize_address(address, channel), channel=channel
    ).first()


def suppressions_for(addresses: list[str], channel: str) -> dict[str, Suppression]:
    """The suppressed ones among `addresses` (keyed as given), in one query, so a batch
    can be screened without a query per recipient."""
    normalized = {address: normalize_address(address, channel) for address in addresses}
    found = {
        s.address: s
        for s in Suppression.objects.filter(
            channel=channel, address__any_of=list(normalized.values())
        )
    }
    return {address: found[norm] for address, norm in normalized.items() if norm in found}
