"""Celery doors onto the engine. Tasks only say "look now"; the rows say what to do."""

import time
import uuid

from celery import shared_task
from django.core.cache import cache
from django.utils import timezone

from notifications.batch import finalize_ready_runs, run_verify_checks
from notifications.dispatch import dispatch_due, next_due_in
from notifications.events import handle_due
from notifications.staged_files import sweep_staged
from notifications.tracking import apply_pending_reports, match_pending

# A retry due sooner than this is worth a hint; later ones wait for the minute sweep.
_HINT_HORIZON_SECONDS = 60
# The pending hint, (token, due as a Unix time), in Django's cache: one per worker process
# with the default local-memory cache, one in all with a shared one (CACHE_URL, e.g. Redis).
_HINT_KEY = "herald:dispatch-hint"
_HINT_GRACE_SECONDS = 30  # a hint lost with its worker blocks the next no longer than this


@shared_task(name="herald.dispatch_due", ignore_result=True)
def dispatch_due_task(hint: str = "") -> dict:
    """`hint`: the token of the "look again" this run answers (empty for beat's sweep and
    for the nudges of newly staged deliveries)."""
    pending = cache.get(_HINT_KEY)
    if hint and pending and pending[0] == hint:
        cache.delete(_HINT_KEY)  # answered: the next hint may be set
    report = dispatch_due(now=timezone.now())
    # Tracking reports a lost "look now" left waiting, then the ones that arrived before
    # their send recorded the provider id.
    apply_pending_reports(now=timezone.now())
    match_pending(now=timezone.now())
    # Batches whose last delivery was decided by a sweep (expired, reconciled) close here.
    finalize_ready_runs(now=timezone.now())
    wait = next_due_in(now=timezone.now())
    if wait is not None and wait < _HINT_HORIZON_SECONDS:
        _hint(max(1.0, wait))
    return report.as_dict()


def _hint(countdown: float) -> None:
    """Ask for one more run when the next delivery is due, unless a hint due as soon is
    pending. A hint only (the beat sweep finds the row too; every delivery is claimed
    before it is sent, so a second run sends nothing twice), but each run of this task
    (beat's, every nudge, every hint) used to add one, and the chains added up."""
    now = time.time()
    due = now + countdown
    pending = cache.get(_HINT_KEY)
    # A pending hint whose time has passed was answered (by another process, with a cache
    # of its own) or lost: it holds nothing back.
    if pending and now < pending[1] <= due + 1:
        return
    token = uuid.uuid4().hex
    cache.set(_HINT_KEY, (token, due), timeout=countdown + _HINT_GRACE_SECONDS)
    dispatch_due_task.apply_async(kwargs={"hint": token}, countdown=countdown)


@shared_task(name="herald.handle_events", ignore_result=True)
def handle_events_task() -> dict:
    return handle_due(now=timezone.now())


@shared_task(name="herald.sweep_staged_attachments", ignore_result=True)
def sweep_staged_attachments_task() -> int:
    return sweep_staged(now=timezone.now())


@shared_task(name="herald.run_verify_checks", ignore_result=True)
def run_verify_checks_task() -> dict:
    return run_verify_checks(now=timezone.now())


@shared_task(name="herald.evaluate_triggers", ignore_result=True)
def evaluate_triggers_task() -> dict:
    """Seed 003's five-minute cron: every active trigger workflow, Layer 1 then Layer 2."""
    from notifications.triggers import evaluate_triggers

    return evaluate_triggers(now=timezone.now())


@shared_task(name="herald.apply_reports", ignore_result=True)
def apply_reports_task() -> int:
    """Apply the tracking reports webhooks stored (answered at once, applied here)."""
    applied = total = apply_pending_reports(now=timezone.now())
    while applied:
        applied = apply_pending_reports(now=timezone.now())
        total += applied
    return total
