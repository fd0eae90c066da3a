"""Scheduled sends are rows found by the sweep, never broker ETAs (Redis redelivers an
unacknowledged ETA task after its visibility timeout, which would send twice)."""

from datetime import timedelta

import pytest
import time_machine
from celery.signals import before_task_publish
from django.utils import timezone

from notifications.models import Delivery, RecordedMessage
from notifications.outbox import Recipient, stage_deliveries
from notifications.tasks import dispatch_due_task
from tests.notifications.factories import NotificationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def recording_email(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"


@pytest.fixture
def published():
    messages = []

    def record(sender=None, headers=None, **kwargs):
        messages.append((sender, headers.get("eta"), headers.get("countdown")))

    before_task_publish.connect(record, weak=False)
    yield messages
    before_task_publish.disconnect(record)


def test_a_delivery_due_in_hours_is_a_row_not_a_broker_countdown(
    published, django_capture_on_commit_callbacks
):
    now = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        stage_deliveries(
            notification=NotificationFactory(),
            recipients=[Recipient("customer:1", "a@example.com", {"customer_name": "A"})],
            now=now,
            key_prefix="later",
            send_at=now + timedelta(hours=3),
        )
    assert published == [("herald.dispatch_due", None, None)]  # "look now", no ETA
    assert Delivery.objects.get().status == "scheduled"


def test_a_task_redelivered_after_the_visibility_timeout_sends_nothing_twice():
    due = timezone.now() + timedelta(hours=3)
    stage_deliveries(
        notification=NotificationFactory(),
        recipients=[Recipient("customer:1", "a@example.com", {"customer_name": "A"})],
        now=timezone.now(),
        key_prefix="later",
        send_at=due,
    )
    with time_machine.travel(due + timedelta(seconds=5), tick=False):
        first = dispatch_due_task()
    # The same task message delivered again an hour later (visibility timeout passed).
    with time_machine.travel(due + timedelta(hours=1), tick=False):
        second = dispatch_due_task()
    assert (first["sent"], second["sent"]) == (1, 0)
    assert RecordedMessage.objects.count() == 1


# --- "look again" hints: only for what dispatch could send, one pending at a time ------------


@pytest.fixture
def hints():
    """The "look again" hints published: the token each carries."""
    tokens = []

    def record(sender=None, headers=None, body=None, **kwargs):
        if sender == "herald.dispatch_due" and headers.get("eta"):
            tokens.append(body[1]["hint"])

    before_task_publish.connect(record, weak=False)
    yield tokens
    before_task_publish.disconnect(record)


def _stage(key: str, *, at, **fields) -> Delivery:
    stage_deliveries(
        notification=NotificationFactory(),
        recipients=[Recipient(f"customer:{key}", f"{key}@example.com", {"customer_name": key})],
        now=at,
        key_prefix=key,
        send_at=at,
    )
    delivery = Delivery.objects.get(recipient_key=f"customer:{key}")
    if fields:
        Delivery.objects.filter(pk=delivery.pk).update(**fields)
    return delivery


def test_held_deliveries_ask_for_no_hint(hints):
    """A delivery due but held by a kill switch, a halted run or an open provider breaker
    waits for a person or the breaker's trial: each run asked to run again a second later,
    and every new run started one more such chain (the worker crashed under them)."""
    from notifications import batch
    from notifications.dispatch import next_due_in
    from notifications.models import KillSwitch, ProviderBreaker, WorkflowRun

    now = timezone.now()
    frozen = _stage("frozen", at=now, channel="sms", address="+14155550100")
    KillSwitch.objects.create(name="stop sms", scope="channel", channel="sms", is_on=True)
    run = WorkflowRun.objects.create(workflow=batch.batch_workflow(), status="aborted")
    _stage("halted", at=now, workflow_run=run)
    ProviderBreaker.objects.create(
        provider="whatsapp:recording", state="open", opened_at=now, cooloff_seconds=300
    )
    _stage("behind-breaker", at=now, channel="whatsapp", address="+14155550101")

    with time_machine.travel(now, tick=False):
        report = dispatch_due_task()
        assert next_due_in(now=now) == 300.0  # the breaker's trial call

    assert (report["sent"], report["frozen"]) == (0, 1)
    assert hints == []
    frozen.refresh_from_db()
    assert frozen.status == "scheduled"


def test_runs_keep_one_hint_pending_not_one_each(hints):
    now = timezone.now()
    _stage("soon", at=now + timedelta(seconds=10))
    with time_machine.travel(now, tick=False):
        dispatch_due_task()  # beat's sweep
        dispatch_due_task()  # a nudge
        dispatch_due_task()  # another
    assert len(hints) == 1

    with time_machine.travel(now + timedelta(seconds=4), tick=False):
        _stage("sooner", at=now + timedelta(seconds=6))
        dispatch_due_task()  # a due time before the pending hint's: one more hint
        dispatch_due_task()
    assert len(hints) == 2


def test_the_hinted_run_sends_and_hands_the_hint_on(hints):
    now = timezone.now()
    _stage("first", at=now + timedelta(seconds=5))
    _stage("second", at=now + timedelta(seconds=20))
    with time_machine.travel(now, tick=False):
        dispatch_due_task()
    assert len(hints) == 1
    with time_machine.travel(now + timedelta(seconds=5), tick=False):
        report = dispatch_due_task(hint=hints[0])
    assert report["sent"] == 1
    assert len(hints) == 2  # the second one's: the answered hint no longer holds it back
    assert RecordedMessage.objects.count() == 1


def test_a_hint_answered_by_another_process_holds_nothing_back(hints):
    """With a cache per process, a hint answered by another worker stays in this one's
    cache: past its time it must not hold the next hint back."""
    now = timezone.now()
    _stage("soon", at=now + timedelta(seconds=10))
    with time_machine.travel(now, tick=False):
        dispatch_due_task()
    _stage("later", at=now + timedelta(seconds=20))
    with time_machine.travel(now + timedelta(seconds=12), tick=False):
        report = dispatch_due_task()  # not the hinted run: that one went to another process
    assert report["sent"] == 1
    assert len(hints) == 2


def test_a_row_that_goes_by_its_fallback_while_the_breaker_is_open_is_hinted(hints):
    from notifications.dispatch import next_due_in
    from notifications.models import ProviderBreaker

    now = timezone.now()
    ProviderBreaker.objects.create(
        provider="email:recording", state="open", opened_at=now, cooloff_seconds=300
    )
    _stage("no-fallback", at=now + timedelta(seconds=2))
    _stage(
        "fallback",
        at=now + timedelta(seconds=5),
        fallback_channel="sms",
        fallback_address="+14155550100",
    )
    assert next_due_in(now=now) == 5.0  # rerouted to sms when due, not held until the trial
    ProviderBreaker.objects.create(
        provider="sms:recording", state="open", opened_at=now, cooloff_seconds=120
    )
    # Both open: the fallback is not taken (reroute_to_fallback skips an open one), and
    # nothing waits on sms itself: email's trial call is the next chance.
    assert next_due_in(now=now) == 300.0


def test_kicks_closer_than_a_second_are_merged_into_two(
    published, django_capture_on_commit_callbacks
):
    """Staging one delivery per call (the reminders' dispatcher: 144 in a row) kicked the
    dispatcher once per call: 144 dispatch runs, all but the first finding nothing."""
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        for n in range(20):
            with django_capture_on_commit_callbacks(execute=True):
                _stage(f"r{n}", at=now)
    # One at once, one a second later for what was staged meanwhile.
    assert [(sender, eta is not None) for sender, eta, _ in published] == [
        ("herald.dispatch_due", False),
        ("herald.dispatch_due", True),
    ]
    with (
        time_machine.travel(now + timedelta(seconds=2), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        _stage("later", at=now)
    assert len(published) == 3  # a second on: kicked at once again


def test_a_shared_cache_that_is_down_still_kicks(
    published, settings, django_capture_on_commit_callbacks
):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
        }
    }
    with django_capture_on_commit_callbacks(execute=True):
        _stage("a", at=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        _stage("b", at=timezone.now())
    assert [(sender, eta) for sender, eta, _ in published] == [
        ("herald.dispatch_due", None),
        ("herald.dispatch_due", None),
    ]
