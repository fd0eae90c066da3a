"""Changes to a production run, each with its ledger event where the partner should hear
about it (the lifecycle events the dispatcher maps: sent_to_partner, cancelled, completed).
Staff use them from the admin; a partner portal would call the same functions."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from notifications.events import record_event
from production_runs.discoverer import reminder_event_name, stall, with_last_progress
from production_runs.models import ACTIVE_STATUSES, ProductionRun, ProgressUpdate, RunStatus

# step -> (statuses it may start from, extra condition, new status or None, timestamp set)
STEPS = {
    # created_at is when the run was assigned: assignment pending is measured from it (a run
    # drafted days before was overdue, "waiting since 10 days", the moment it was sent).
    "send": ((RunStatus.DRAFT,), {}, RunStatus.SENT_TO_PARTNER, "created_at"),
    "accept": (
        (RunStatus.SENT_TO_PARTNER,),
        {"accepted_at__isnull": True},
        None,
        "accepted_at",
    ),
    "start": (ACTIVE_STATUSES, {"started_at__isnull": True}, RunStatus.IN_PROGRESS, "started_at"),
    "complete": ((RunStatus.IN_PROGRESS,), {}, RunStatus.COMPLETED, "finished_at"),
    "cancel": ((RunStatus.DRAFT, *ACTIVE_STATUSES), {}, RunStatus.CANCELLED, "finished_at"),
}
LIFECYCLE_EVENT = {"send": "sent_to_partner", "complete": "completed", "cancel": "cancelled"}
# Statuses a step leaves without its event: a draft was never sent to its partner, so its
# cancellation is no news to them ("has been cancelled, please stop work on it").
QUIET_FROM = {"cancel": (RunStatus.DRAFT,)}


class RunStepRefused(ValueError):
    pass


def lifecycle_payload(run: ProductionRun) -> dict:
    return {"production_run_id": run.id, "partner_id": run.partner_id, "design_id": run.design_id}


def run_step(*, run: ProductionRun, step: str, now: datetime) -> bool:
    """Move a run one step (send, accept, start, complete, cancel). Returns False when the
    run is not in a state that step starts from (someone else moved it first)."""
    if step not in STEPS:
        raise RunStepRefused(f"unknown step {step!r}")
    from_statuses, condition, status, stamp = STEPS[step]
    fields = {"updated_at": now}
    if status is not None:
        fields["status"] = status
    if stamp:
        fields[stamp] = now
    if step == "start":
        run.refresh_from_db(fields=["accepted_at"])
        if run.accepted_at is None:
            fields["accepted_at"] = now
    quiet = QUIET_FROM.get(step, ())
    with transaction.atomic():
        runs = ProductionRun.objects.filter(pk=run.pk, **condition)
        told = runs.filter(status__in=[s for s in from_statuses if s not in quiet]).update(**fields)
        moved = told or runs.filter(status__in=quiet).update(**fields)
        if told and step in LIFECYCLE_EVENT:
            if step == "send" and run.partner_id is None:
                raise RunStepRefused(f"run {run.pk} has no partner to send it to")
            name = LIFECYCLE_EVENT[step]
            record_event(
                f"production_run.{name}",
                lifecycle_payload(run),
                idempotency_key=f"production_run:{run.pk}:{name}",
                now=now,
            )
    run.refresh_from_db()
    return bool(moved)


def run_record_progress(
    *, run: ProductionRun, produced_quantity: int, now: datetime
) -> ProgressUpdate:
    if produced_quantity < 0:
        raise RunStepRefused("the produced quantity cannot be negative")
    if produced_quantity > run.quantity:
        raise RunStepRefused(f"{produced_quantity} is more than the {run.quantity} pieces ordered")
    with transaction.atomic():
        update = ProgressUpdate.objects.create(run=run, produced_quantity=produced_quantity, at=now)
        ProductionRun.objects.filter(pk=run.pk).update(
            produced_quantity=produced_quantity, updated_at=now
        )
    return update


def run_remind_now(*, run: ProductionRun, now: datetime, by: str) -> bool:
    """Emit today's reminder for a run by hand, whatever the thresholds and escalation say.
    The dispatcher still dedups it against a reminder sent within the dedup window.
    RunStepRefused, saying why, for a run there is nothing to remind about."""
    if run.status not in ACTIVE_STATUSES:
        raise RunStepRefused(f"run {run.pk} is {run.get_status_display().lower()}, not active")
    if run.partner_id is None:
        raise RunStepRefused(f"run {run.pk} has no partner to remind")
    if not run.partner.whatsapp_number:
        raise RunStepRefused(
            f"run {run.pk}: partner {run.partner} has no WhatsApp number (add it in Production "
            "runs → Partners)"
        )
    found = stall(with_last_progress(ProductionRun.objects.filter(pk=run.pk)).get())
    if found is None:
        raise RunStepRefused(f"run {run.pk} is not stalled: nothing to remind about")
    kind = found[0]
    _, created = record_event(
        reminder_event_name(kind),
        {**lifecycle_payload(run), "reminder_kind": kind, "requested_by": by},
        idempotency_key=f"production_run:{run.pk}:reminder:manual:{now.isoformat()}",
        now=now,
    )
    return created
