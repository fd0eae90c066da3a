"""Slot reservation of a sender's pace: the same slots on SQLite (a locked read, then a
write) and PostgreSQL (one UPDATE ... RETURNING), and no slot handed out twice when
workers reserve at the same moment. `make ci` runs these on both databases (the fast
tests again on PostgreSQL); the marked test checks PostgreSQL's single statement."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from notifications import pacing
from notifications.models import Sender

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def _sender(**fields) -> Sender:
    return Sender.objects.create(key="sms:+15005550006", channel="sms", **fields)


@pytest.mark.django_db
def test_reserves_consecutive_slots_from_the_latest_of_now_cursor_and_pause():
    sender = _sender(rate_per_second=3.0)
    step = timedelta(microseconds=333_334)  # 1/3 s rounded up: three never fit in one second
    assert pacing.reserve_slots(key=sender.key, count=3, now=NOW) == [
        NOW,
        NOW + step,
        NOW + 2 * step,
    ]
    sender.refresh_from_db()
    assert sender.next_slot_at == NOW + 3 * step
    # A later call, earlier than the cursor, queues behind it.
    assert pacing.reserve_slots(key=sender.key, count=1, now=NOW + MS) == [NOW + 3 * step]
    # A pause later than the cursor moves the start to its end.
    Sender.objects.filter(id=sender.id).update(paused_until=NOW + timedelta(seconds=10))
    assert pacing.reserve_slots(key=sender.key, count=2, now=NOW + MS) == [
        NOW + timedelta(seconds=10),
        NOW + timedelta(seconds=10) + step,
    ]
    # Once both are past, `now` wins.
    later = NOW + timedelta(minutes=5)
    assert pacing.reserve_slots(key=sender.key, count=1, now=later) == [later]
    sender.refresh_from_db()
    assert sender.next_slot_at == later + step


@pytest.mark.django_db
def test_an_unknown_sender_is_an_error_and_changes_nothing():
    _sender(rate_per_second=1.0)
    with pytest.raises(Sender.DoesNotExist):
        pacing.reserve_slots(key="sms:+19999999999", count=1, now=NOW)
    assert Sender.objects.get().next_slot_at is None


@pytest.mark.postgres
@pytest.mark.django_db
def test_on_postgresql_the_cursor_moves_in_one_statement():
    assert connection.vendor == "postgresql"
    sender = _sender(rate_per_second=2.0)
    with CaptureQueriesContext(connection) as queries:
        slots = pacing.reserve_slots(key=sender.key, count=2, now=NOW)
    assert slots == [NOW, NOW + timedelta(milliseconds=500)]
    [statement] = [q["sql"] for q in queries]
    assert statement.startswith("UPDATE") and "RETURNING" in statement


@pytest.mark.django_db(transaction=True)
def test_workers_reserving_at_once_never_get_the_same_slot():
    """Eight threads, fifty reservations of three each, on their own connections: 1,200
    slots, all different, one interval apart, and the cursor after the last."""
    sender = _sender(rate_per_second=100.0)
    barrier, got, errors = threading.Barrier(8), [], []

    def worker():
        try:
            barrier.wait()
            for _ in range(50):
                got.extend(pacing.reserve_slots(key=sender.key, count=3, now=NOW))
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    step = timedelta(milliseconds=10)
    assert sorted(got) == [NOW + step * i for i in range(1200)]
    sender.refresh_from_db()
    assert sender.next_slot_at == NOW + step * 1200


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [("rate_per_second", 0), ("rate_per_second", -5), ("max_queue_hours", 1e9)],
)
def test_a_sender_refuses_a_rate_or_queue_time_pacing_cannot_use(admin_client, field, value):
    """A rate of 0 divided pacing by zero (every round of the sender failed); a negative one
    sent without pacing; a huge queue time overflowed the time it is added to."""
    from django.urls import reverse

    sender = Sender.objects.create(key="sms:+15005550006", channel="sms", rate_per_second=1)
    data = {"key": sender.key, "channel": "sms", "rate_per_second": 1, "max_queue_hours": ""}
    response = admin_client.post(
        reverse("admin:notifications_sender_change", args=[sender.pk]), {**data, field: value}
    )
    assert response.status_code == 200  # the form again, with the error
    assert "errorlist" in response.content.decode()
    sender.refresh_from_db()
    assert (sender.rate_per_second, sender.max_queue_hours) == (1, None)
