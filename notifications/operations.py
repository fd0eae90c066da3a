"""What staff do to deliveries and event handlings from the admin: plain functions, each a
conditional update that only touches rows still in the state the action expects."""

from datetime import datetime

from django.db import transaction
from django.db.models import Q

from notifications import batch, tracking
from notifications.events import kick_handlers
from notifications.models import (
    AuditEntry,
    Delivery,
    DeliveryEvent,
    EventHandling,
    Workflow,
    WorkflowRun,
)
from notifications.outbox import kick_dispatch_on_commit

Status = Delivery.Status


def _transition(
    ids, *, now, by: str, action: str, from_statuses, kind, reason, unless=None, **fields
) -> int:
    """Move the rows among `ids` still in `from_statuses` (and not matching `unless`),
    with an event each, and one audit entry saying who did `action` to which."""
    with transaction.atomic():
        # Locked as read (on PostgreSQL): a dispatch claim between the read and the update
        # would leave the events and the audit naming a row the update skipped.
        rows = Delivery.objects.filter(
            id__in=list(ids), status__in=from_statuses
        ).select_for_update(of=("self",))
        if unless is not None:
            rows = rows.exclude(unless)
        moved = list(rows.values_list("id", flat=True))
        Delivery.objects.filter(id__in=moved, status__in=from_statuses).update(
            status_reason=reason, updated_at=now, **fields
        )
        DeliveryEvent.objects.bulk_create(
            [DeliveryEvent(delivery_id=i, kind=kind, at=now, reason=reason) for i in moved]
        )
        if moved:
            AuditEntry.objects.create(
                at=now,
                by=by,
                action=action,
                target=f"{len(moved)} deliveries",
                detail={"deliveries": moved, "reason": reason},
            )
    return len(moved)


def suppressed_among(ids) -> list[int]:
    """The ids of these deliveries whose address is suppressed now (a retry would only be
    skipped at send): one suppression query per channel."""
    by_channel: dict[str, dict[int, str]] = {}
    for pk, channel, address in Delivery.objects.filter(id__in=list(ids)).values_list(
        "id", "channel", "address"
    ):
        by_channel.setdefault(channel, {})[pk] = address
    found = []
    for channel, addresses in by_channel.items():
        suppressed = tracking.suppressions_for(list(set(addresses.values())), channel)
        found += [pk for pk, address in addresses.items() if address in suppressed]
    return sorted(found)


def delivery_retry(*, ids, now: datetime, by: str) -> int:
    """Failed deliveries get a fresh set of attempts, due now. One whose batch was cancelled
    is left alone: a cancelled batch sends nothing more. A batch that had ended (completed,
    partial or failed) is reopened, so that it ends again with the retried deliveries'
    outcomes; one aborted by its breaker keeps them waiting until it is resumed."""
    ids = list(ids)
    cancelled = Q(workflow_run__status=WorkflowRun.Status.CANCELLED)
    with transaction.atomic():
        # The runs first, locked: a batch cancelled meanwhile has its rows left alone.
        runs = list(
            WorkflowRun.objects.select_for_update()
            .filter(id__in=Delivery.objects.filter(id__in=ids).values("workflow_run_id"))
            .values_list("id", flat=True)
        )
        count = _transition(
            ids,
            now=now,
            by=by,
            action="delivery_retry",
            from_statuses=[Status.FAILED],
            kind="queued",
            reason=f"retry requested by {by}",
            unless=cancelled,
            status=Status.SCHEDULED,
            send_at=now,
            attempts=0,
            claim_token=None,
        )
        _reopen_ended_batches(
            Q(id__in=runs, deliveries__id__in=ids, deliveries__status=Status.SCHEDULED),
            reason=f"reopened: failed deliveries retried by {by}",
            consecutive_failures=0,
        )
    if count:
        kick_dispatch_on_commit()
    return count


ENDED = [WorkflowRun.Status.COMPLETED, WorkflowRun.Status.PARTIAL, WorkflowRun.Status.FAILED]


def _reopen_ended_batches(which: Q, *, reason: str, **fields) -> list[int]:
    """Batch runs matching `which` that had ended (completed, partial or failed), running
    again so that they end again; returns their ids."""
    runs = WorkflowRun.objects.filter(
        which, workflow__type=Workflow.Type.BATCH_NOTIFY, status__in=ENDED
    )
    ids = list(runs.values_list("id", flat=True).distinct())
    WorkflowRun.objects.filter(id__in=ids, status__in=ENDED).update(
        status=WorkflowRun.Status.RUNNING, status_reason=reason[:300], completed_at=None, **fields
    )
    return ids


def delivery_cancel(*, ids, now: datetime, by: str) -> int:
    """Scheduled deliveries that should not go out any more."""
    return _transition(
        ids,
        now=now,
        by=by,
        action="delivery_cancel",
        from_statuses=[Status.SCHEDULED],
        kind="cancelled",
        reason=f"cancelled by {by}",
        status=Status.CANCELLED,
    )


def delivery_reconcile(
    *, ids, accepted: bool, now: datetime, by: str, provider_message_id: str = ""
) -> int:
    """Deliveries whose worker stopped while sending ("unknown"), settled by a person who
    checked the provider: it has the message (sent) or it does not (failed; retrying it is
    then a separate, deliberate step). Never resent here. With `provider_message_id` (one
    delivery the provider has, the id found there): recorded, and the tracking reports
    that came for it meanwhile (kept as unmatched) are applied. ValueError if it does not
    fit: more than one delivery, not accepted, or another delivery's id."""
    ids = list(ids)
    fields = {"sent_at": now} if accepted else {}
    if provider_message_id:
        if not accepted or len(ids) != 1:
            raise ValueError("A provider message id goes with one delivery the provider has.")
        others = Delivery.objects.filter(provider_message_id=provider_message_id)
        if others.exclude(id=ids[0]).exists():
            raise ValueError(
                f"The provider message id {provider_message_id} is another delivery's: "
                "check it at the provider."
            )
        fields["provider_message_id"] = provider_message_id
    count = _transition(
        ids,
        now=now,
        by=by,
        action=f"delivery_reconcile_{'sent' if accepted else 'failed'}",
        from_statuses=[Status.UNKNOWN],
        kind="sent" if accepted else "failed",
        reason=f"reconciled by {by}: the provider {'has' if accepted else 'does not have'} it",
        status=Status.SENT if accepted else Status.FAILED,
        **fields,
    )
    if count and provider_message_id:
        tracking.match_unmatched(Delivery.objects.get(id=ids[0]), now=now)
    if count:
        # A batch that ended while they were unknown counted them failed: it ends again,
        # with what they turned out to be (summary, reflexion, event and verify check).
        reopened = _reopen_ended_batches(
            Q(deliveries__id__in=ids),
            reason=f"reopened: unknown deliveries reconciled by {by}",
        )
        for run_id in reopened:
            batch.finalize_if_done(run_id, now=now)
    return count


def handling_retry(*, ids, now: datetime) -> int:
    count = EventHandling.objects.filter(
        id__in=list(ids), status__in=[EventHandling.Status.FAILED, EventHandling.Status.GAVE_UP]
    ).update(status=EventHandling.Status.PENDING, next_attempt_at=now)
    if count:
        transaction.on_commit(kick_handlers)
    return count
