"""Two staff deciding the same batch at once fan it out once."""

import multiprocessing
import threading

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.utils import timezone

from notifications import batch
from notifications.models import Delivery, ProposedAction
from tests.notifications.factories import CustomerFactory


def _staged_batch(size):
    mike = User.objects.create_superuser("mike", "m@example.com", "pw")
    User.objects.create_superuser("anna", "a@example.com", "pw")
    CustomerFactory.create_batch(size)
    run = batch.batch_launch(
        user=mike,
        cohort_filter="bid=B5875",
        subject="s",
        body_template="b",
        max_recipients=size,
        now=timezone.now(),
    )
    envelope = run.proposed_actions.get()
    batch.envelope_approve(envelope=envelope, user=mike, now=timezone.now())
    return run, list(
        run.proposed_actions.filter(action_type="hitl_review").values_list("id", flat=True)
    )


def _approve_all(username, ids, barrier, results):
    try:
        barrier.wait()
        user = User.objects.get(username=username)
        decided = batch.reviews_decide(ids=ids, approve=True, user=user, now=timezone.now())
        results.append(decided)
    finally:
        connections.close_all()


def _assert_one_fan_out(run, ids, decided_total):
    assert decided_total == len(ids)  # each row was moved by exactly one of the two
    keys = list(Delivery.objects.values_list("idempotency_key", flat=True))
    assert len(keys) == len(set(keys)) == len(ids)
    assert ProposedAction.objects.filter(id__in=ids, status="approved").count() == len(ids)


@pytest.mark.django_db(transaction=True)
def test_two_staff_bulk_approving_at_once_in_threads_fan_out_once():
    run, ids = _staged_batch(40)
    barrier, results = threading.Barrier(2), []
    threads = [
        threading.Thread(target=_approve_all, args=(name, ids, barrier, results))
        for name in ("mike", "anna")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _assert_one_fan_out(run, ids, sum(r.decided for r in results))


def _approve_in_process(username, ids, barrier, queue):
    connections.close_all()
    barrier.wait()
    user = User.objects.get(username=username)
    queue.put(batch.reviews_decide(ids=ids, approve=True, user=user, now=timezone.now()).decided)
    connections.close_all()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_staff_bulk_approving_at_once_in_processes_on_postgresql_fan_out_once():
    run, ids = _staged_batch(200)
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_approve_in_process, args=(name, ids, barrier, queue))
        for name in ("mike", "anna")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    _assert_one_fan_out(run, ids, queue.get(timeout=5) + queue.get(timeout=5))


def _discover(barrier, results, now):
    from production_runs.discoverer import discover_reminders

    try:
        barrier.wait()
        results.append(discover_reminders(now=now))
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_two_discoverer_runs_at_once_the_same_day_emit_one_reminder_per_run():
    from notifications.models import Event
    from tests.production_runs.factories import NOW, idle_run, not_started_run, pending_run

    runs = [pending_run(), not_started_run(), idle_run(), pending_run()]
    barrier, results = threading.Barrier(2), []
    threads = [threading.Thread(target=_discover, args=(barrier, results, NOW)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = Event.objects.filter(name__startswith="production_run.reminder_")
    assert sorted(e.payload["production_run_id"] for e in events) == sorted(r.id for r in runs)
    assert len(results) == 2 and not any(r["failed"] for r in results)


def _discover_in_process(barrier, queue, now):
    from production_runs.discoverer import discover_reminders

    connections.close_all()
    barrier.wait()
    queue.put(discover_reminders(now=now, chunk_size=100))
    connections.close_all()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_discoverer_processes_at_once_on_postgresql_emit_one_reminder_per_run():
    """Pages of 100 written in bulk by two processes at once: where both write the same
    page, one bulk insert fails on the unique key and that page goes one run at a time."""
    from notifications.models import Event
    from production_runs.models import ReminderState
    from tests.production_runs.factories import NOW, idle_run, not_started_run, pending_run

    runs = [make() for _ in range(100) for make in (pending_run, not_started_run, idle_run)]
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_discover_in_process, args=(barrier, queue, NOW)) for _ in "ab"]
    for p in procs:
        p.start()
    summaries = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    events = Event.objects.filter(name__startswith="production_run.reminder_")
    assert sorted(e.payload["production_run_id"] for e in events) == sorted(r.id for r in runs)
    states = dict(ReminderState.objects.values_list("run_id", "reminder_count"))
    assert states == {r.id: 1 for r in runs}
    assert sum(s["dispatched"] for s in summaries) == len(runs)
    # Each run is one process's: the other found its event (already emitted) or, reading
    # after that page was committed, its state reminded today (not due).
    assert all(
        s["dispatched"] + s["already_emitted"] + s["skipped_not_due"] == len(runs)
        for s in summaries
    )
    assert not any(s["failed"] for s in summaries)


def _post_gate_approval(username, envelope_id, barrier, said):
    from django.test import Client
    from django.urls import reverse

    try:
        client = Client()
        client.force_login(User.objects.get(username=username))
        barrier.wait()
        response = client.post(
            reverse("admin:notifications_proposedaction_changelist"),
            {"action": "approve_selected", "_selected_action": [envelope_id], "post": "yes"},
        )
        said.append([str(m) for m in response.wsgi_request._messages][-1])
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_two_staff_approving_one_gate_at_once_are_told_who_did_it():
    """The second said "0 recipient(s) approved; 0 deliveries staged." without a word on
    the gate."""
    mike = User.objects.create_superuser("mike", "m@example.com", "pw")
    User.objects.create_superuser("anna", "a@example.com", "pw")
    CustomerFactory.create_batch(3)
    run = batch.batch_launch(
        user=mike, cohort_filter="bid=B5875", subject="s", body_template="b", now=timezone.now()
    )
    envelope = run.proposed_actions.get()
    barrier, said = threading.Barrier(2), []
    threads = [
        threading.Thread(target=_post_gate_approval, args=(name, envelope.id, barrier, said))
        for name in ("mike", "anna")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    envelope.refresh_from_db()
    first = next(m for m in said if m.startswith("3 review(s) staged from the batch gate"))
    second = next(m for m in said if m is not first)
    # Whether it saw the gate pending (the other approved it meanwhile) or decided.
    assert second == (
        f"the batch gate of run {run.id} was already approved by {envelope.decided_by} (no-op)."
    )
    assert run.proposed_actions.filter(action_type="hitl_review").count() == 3
