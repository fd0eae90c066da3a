"""Seed 001 walked on `make run`: a run closed while its approvals were being staged, the
same batch launched twice in another typing, a customer made inactive still emailed."""

import multiprocessing
import threading
import time
from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.utils import timezone

from notifications import batch, dispatch
from notifications.cohort import canonical_filter
from notifications.dispatch import ManualClock
from notifications.models import (
    Delivery,
    DeliveryEvent,
    Event,
    ProposedAction,
    RecordedMessage,
    ReflexionEntry,
    WorkflowRun,
)
from tests.notifications.factories import CustomerFactory

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
SUBJECT = "Holiday schedule for {{ customer_name }}"
BODY = "Dear {{ customer_name }},\nyour account {{ account_ref }} ({{ school_year }})."


@pytest.fixture(autouse=True)
def recording_email(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"


def _launch(user, *, query="bid=B5875", size=None, now=NOW, **texts):
    return batch.batch_launch(
        user=user,
        cohort_filter=query,
        subject=texts.get("subject", SUBJECT),
        body_template=texts.get("body_template", BODY),
        max_recipients=size,
        now=now,
    )


def _open_gate(run, user, now=NOW):
    envelope = run.proposed_actions.get(action_type=ProposedAction.Type.BATCH_ENVELOPE)
    batch.envelope_approve(envelope=envelope, user=user, now=now)
    return list(
        run.proposed_actions.filter(action_type=ProposedAction.Type.HITL_REVIEW)
        .order_by("id")
        .values_list("id", flat=True)
    )


def _dispatch(now=NOW):
    return dispatch.dispatch_due(now=now, clock=ManualClock(now))


def _assert_not_ended(run):
    run.refresh_from_db()
    assert run.status == WorkflowRun.Status.RUNNING, run.status_reason
    assert not ReflexionEntry.objects.filter(workflow_run=run).exists()
    assert not Event.objects.filter(name__startswith="workflow.").exists()


# 1. A run is not finalized while approved reviews are still being staged.


@pytest.mark.django_db
def test_a_second_click_between_the_first_clicks_approval_and_its_staging_keeps_the_run_open(
    mike,
):
    CustomerFactory.create_batch(3)
    run = _launch(mike)
    ids = _open_gate(run, mike)
    # The first click's steps, with the second click between them (as the race had it).
    batch._claim(ids, status=ProposedAction.Status.APPROVED, user=mike, now=NOW)
    second = batch.reviews_decide(ids=ids, approve=True, user=mike, now=NOW)
    assert (second.decided, second.already_decided) == (0, 3)
    _assert_not_ended(run)
    batch._stage_approved(ProposedAction.objects.filter(id__in=ids), now=NOW)
    assert _dispatch().sent == 3
    run.refresh_from_db()
    assert run.status == WorkflowRun.Status.COMPLETED
    assert run.status_reason == "ended completed: 3 sent, 0 failed, 0 skipped, 0 rejected of 3"
    assert Event.objects.get(name="workflow.completed").payload["sent"] == 3


@pytest.mark.django_db
def test_the_finalize_sweep_between_an_approval_and_its_staging_leaves_the_run_open(mike):
    CustomerFactory.create_batch(3)
    run = _launch(mike)
    first, *rest = _open_gate(run, mike)
    batch.reviews_decide(ids=[first], approve=True, user=mike, now=NOW)
    assert _dispatch().sent == 1  # running, one sent, two awaiting
    batch._claim(rest, status=ProposedAction.Status.APPROVED, user=mike, now=NOW)
    assert batch.finalize_ready_runs(now=NOW) == 0
    _assert_not_ended(run)
    batch._stage_approved(ProposedAction.objects.filter(id__in=rest), now=NOW)
    assert _dispatch().sent == 2
    run.refresh_from_db()
    assert run.status_reason == "ended completed: 3 sent, 0 failed, 0 skipped, 0 rejected of 3"


def _in_thread(barrier, work, errors):
    try:
        barrier.wait()
        work()
    except Exception as error:  # pragma: no cover - reported by the test
        errors.append(error)
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_three_simultaneous_approvals_and_a_finalize_loop_in_threads_leave_the_run_running():
    mike = User.objects.create_superuser("mike", "mike@example.com", "pw")
    CustomerFactory.create_batch(300)
    run = _launch(mike, size=300, now=timezone.now())
    ids = _open_gate(run, mike, now=timezone.now())
    approving = threading.Event()
    results, errors = [], []

    def approve():
        results.append(batch.reviews_decide(ids=ids, approve=True, user=mike, now=timezone.now()))

    def finalize_loop():
        while approving.is_set():
            batch.finalize_ready_runs(now=timezone.now())

    approving.set()
    barrier = threading.Barrier(4)
    threads = [
        threading.Thread(target=_in_thread, args=(barrier, work, errors))
        for work in (approve, approve, approve, finalize_loop)
    ]
    for t in threads:
        t.start()
    for t in threads[:3]:
        t.join()
    approving.clear()
    threads[3].join()
    assert not errors
    assert sum(r.decided for r in results) == 300
    assert Delivery.objects.filter(workflow_run=run, status="scheduled").count() == 300
    _assert_not_ended(run)


@pytest.mark.django_db(transaction=True)
def test_a_cancel_right_after_the_gate_is_approved_leaves_no_review_pending():
    mike = User.objects.create_superuser("mike", "mike@example.com", "pw")
    CustomerFactory.create_batch(600)
    run = _launch(mike, size=600, now=timezone.now())
    envelope = run.proposed_actions.get()
    errors = []

    def approve():
        batch.envelope_approve(envelope=envelope, user=mike, now=timezone.now())

    def cancel_once_approved():
        deadline = time.monotonic() + 60
        while not ProposedAction.objects.filter(id=envelope.id, status="approved").exists():
            assert time.monotonic() < deadline
        batch.run_cancel(run=run, user=mike, now=timezone.now())

    barrier = threading.Barrier(2)
    threads = [
        threading.Thread(target=_in_thread, args=(barrier, work, errors))
        for work in (approve, cancel_once_approved)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    run.refresh_from_db()
    assert run.status == WorkflowRun.Status.CANCELLED
    reviews = run.proposed_actions.filter(action_type=ProposedAction.Type.HITL_REVIEW)
    assert reviews.count() == 600
    assert not reviews.filter(status="pending").exists()


def _approve_in_process(ids, barrier, queue):
    connections.close_all()
    barrier.wait()
    user = User.objects.get(username="mike")
    queue.put(batch.reviews_decide(ids=ids, approve=True, user=user, now=timezone.now()).decided)
    connections.close_all()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_three_simultaneous_approval_processes_on_postgresql_leave_the_run_running():
    mike = User.objects.create_superuser("mike", "mike@example.com", "pw")
    CustomerFactory.create_batch(500)
    run = _launch(mike, size=500, now=timezone.now())
    ids = _open_gate(run, mike, now=timezone.now())
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_approve_in_process, args=(ids, barrier, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(queue.get(timeout=5) for _ in procs) == 500
    assert Delivery.objects.filter(workflow_run=run, status="scheduled").count() == 500
    _assert_not_ended(run)


# 2. The same batch in another typing is the same batch.


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "subject", "body"),
    [
        ("region=NYC DOE&bid=B5875", SUBJECT, BODY),  # fields reordered
        (" bid = B5875 & region = NYC DOE ", SUBJECT, BODY),  # spaces around & and =
        ("bid=B5875&region=NYC%20DOE", SUBJECT, BODY),  # %-encoded
        ("?region=nyc doe&bid=b5875", SUBJECT, BODY),  # case: both lookups ignore it
        ("bid=B5875&region=NYC DOE", f"  {SUBJECT} ", BODY.replace("\n", "\r\n") + "\r\n"),
        (  # spaces inside the tags' braces, and before a line's end
            "bid=B5875&region=NYC DOE",
            SUBJECT.replace("{{ customer_name }}", "{{customer_name}}"),
            BODY.replace("\n", "  \n"),
        ),
    ],
)
def test_the_same_batch_in_another_typing_is_refused_while_the_first_is_unfinished(
    mike, query, subject, body
):
    CustomerFactory(bid="B5875", region="NYC DOE")
    first = _launch(mike, query="bid=B5875&region=NYC DOE")
    with pytest.raises(batch.BatchBlocked) as caught:
        _launch(mike, query=query, subject=subject, body_template=body)
    assert caught.value.messages == [
        f"The same batch (filter, subject and body) is already run {first.id}, awaiting "
        "approval (HITL gate): launching it again would send the same message twice. "
        "Approve or cancel that run, or change this one."
    ]
    assert WorkflowRun.objects.count() == 1


def test_a_canonical_filter_folds_case_only_where_its_lookup_ignores_case():
    assert canonical_filter("tag=VIP&company=Acme&email_domain=@X.org") == (
        ("company", "acme"),
        ("email_domain", "@x.org"),
        ("tag", "vip"),
    )
    # account_ref matches exactly (IN): its case is kept; list items are sorted, ids read
    # as numbers.
    assert canonical_filter("account_ref=NYC-2, NYC-1&id=02,1") == (
        ("account_ref", "NYC-1,NYC-2"),
        ("id", "1,2"),
    )
    assert canonical_filter("account_ref=nyc-1") != canonical_filter("account_ref=NYC-1")


# 3. A customer marked inactive after the launch is flagged, and skipped, not sent.


@pytest.mark.django_db
def test_a_customer_marked_inactive_after_launch_is_flagged_and_skipped_not_sent(mike):
    closed, open_ = CustomerFactory.create_batch(2)
    run = _launch(mike)
    ids = _open_gate(run, mike)
    closed.is_inactive = True
    closed.save()
    reviews = ProposedAction.objects.filter(id__in=ids)
    assert batch.unreachable_reviews(reviews) == (1, 0)  # skipped if approved, not failed
    flagged = batch.screen_addresses(
        {closed.id: closed.email, open_.id: open_.email}, inactive={closed.id}
    )
    assert flagged == {closed.id: ("inactive", "customer marked inactive")}

    decided = batch.reviews_decide(ids=ids, approve=True, user=mike, now=NOW)
    assert (decided.decided, decided.deliveries, decided.skipped_inactive) == (2, 1, 1)
    skipped = Delivery.objects.get(recipient_key=f"customer:{closed.id}")
    assert skipped.status == "skipped"
    assert skipped.status_reason == batch.INACTIVE_REASON
    assert DeliveryEvent.objects.get(delivery=skipped).reason == batch.INACTIVE_REASON
    assert _dispatch().sent == 1
    assert list(RecordedMessage.objects.values_list("to", flat=True)) == [open_.email]
    run.refresh_from_db()
    assert run.status_reason == "ended partial: 1 sent, 0 failed, 1 skipped, 0 rejected of 2"


def test_the_review_list_flags_only_reviews_still_to_decide(mike, admin_client):
    from django.urls import reverse

    closed, _ = CustomerFactory.create_batch(2)
    ids = _open_gate(_launch(mike), mike)
    closed.is_inactive = True
    closed.save()
    url = reverse("admin:notifications_proposedaction_changelist")
    flag = "customer marked inactive: skipped, not sent"

    assert admin_client.get(url).content.decode().count(flag) == 1
    batch.reviews_decide(ids=ids, approve=True, user=mike, now=NOW)
    # Decided: its delivery was skipped; reactivating the customer would not send it.
    assert flag not in admin_client.get(url).content.decode()
    review = ProposedAction.objects.get(customer=closed)
    page = admin_client.get(reverse("admin:notifications_proposedaction_change", args=[review.pk]))
    assert flag not in page.content.decode()
