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
