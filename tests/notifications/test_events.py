from datetime import UTC, datetime, timedelta

import pytest
from django.db import DataError, connection
from django.test.utils import CaptureQueriesContext

from notifications import events
from notifications.models import Event, EventHandling

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


@pytest.fixture
def calls():
    """A subscriber for production_run.* that records what it saw."""
    seen = []

    def on_production_run(event):
        seen.append((event.name, event.payload["production_run_id"]))
        return {"handled": event.payload["production_run_id"]}

    events.subscribe("herald_test_run.*", on_production_run, name="test.on_production_run")
    yield seen
    events._subscribers.pop("test.on_production_run")


def test_an_event_recorded_twice_exists_once_and_its_subscriber_runs_once(calls):
    first, created = events.record_event(
        "herald_test_run.reminder_idle", {"production_run_id": 7}, idempotency_key="k1", now=NOW
    )
    again, created_again = events.record_event(
        "herald_test_run.reminder_idle", {"production_run_id": 999}, idempotency_key="k1", now=NOW
    )
    assert (created, created_again) == (True, False)
    assert again.pk == first.pk and again.payload == {"production_run_id": 7}
    assert events.handle_due(now=NOW) == {"done": 1, "failed": 0, "gave_up": 0}
    assert events.handle_due(now=NOW + timedelta(hours=1)) == {"done": 0, "failed": 0, "gave_up": 0}
    assert calls == [("herald_test_run.reminder_idle", 7)]
    handling = EventHandling.objects.get()
    assert (handling.status, handling.attempts, handling.result) == ("done", 1, {"handled": 7})
    assert Event.objects.count() == 1


def test_subscribers_match_by_pattern_only(calls):
    events.record_event("workflow.completed", {"run": 1}, idempotency_key="w1", now=NOW)
    assert not EventHandling.objects.exists()
    events.handle_due(now=NOW)
    assert calls == []


def handlings() -> list[tuple]:
    """Every handling as the worker will see it, by event (ids aside)."""
    return sorted(
        (h.event.idempotency_key, h.subscriber, h.status, h.attempts, h.last_error,
         h.next_attempt_at, h.claim_token, h.claimed_at, h.handled_at, h.result)
        for h in EventHandling.objects.select_related("event")
    )  # fmt: skip


def test_events_recorded_together_get_the_handlings_they_would_get_one_by_one(calls):
    """`record_events` writes the handlings of the lot in a few statements: the same rows,
    per subscriber whose pattern matches, as `record_event` writes one event at a time."""
    events.subscribe("*.reminder_idle", lambda event: None, name="test.idle_only")
    names = ["herald_test_run.reminder_idle", "herald_test_run.reminder_not_started", "x.y"]
    new = [
        events.NewEvent(names[n % 3], {"production_run_id": n}, f"many:{n}") for n in range(1_060)
    ]
    try:
        with CaptureQueriesContext(connection) as captured:
            recorded = events.record_events(new, now=NOW)
        together = handlings()
        EventHandling.objects.all().delete()
        Event.objects.all().delete()
        for event in new:
            events.record_event(
                event.name, event.payload, idempotency_key=event.idempotency_key, now=NOW
            )
        one_by_one = handlings()
        handled = events.handle_due(now=NOW, limit=2_000)
    finally:
        events._subscribers.pop("test.idle_only")

    assert recorded == {event.idempotency_key for event in new}
    assert together == one_by_one
    assert len(together) == 707 + 354  # herald_test_run.* twice in three, idle once in three
    handling_inserts = [q for q in captured if "INSERT" in q["sql"] and "handling" in q["sql"]]
    assert len(handling_inserts) == 2 + 1  # 707 ids for one subscriber, 354 for the other
    assert handled == {"done": len(together), "failed": 0, "gave_up": 0}
    assert len(calls) == 707


def test_events_recorded_together_that_no_one_subscribes_to_get_no_handlings(calls):
    recorded = events.record_events(
        [events.NewEvent("x.y", {}, "nobody:1"), events.NewEvent("x.z", {}, "nobody:2")], now=NOW
    )
    assert recorded == {"nobody:1", "nobody:2"}
    assert Event.objects.count() == 2 and not EventHandling.objects.exists()


def test_a_failed_handling_is_retried_with_backoff_and_visible():
    attempts = []

    def flaky(event):
        attempts.append(event.id)
        if len(attempts) < 3:
            raise RuntimeError("partner API down")

    events.subscribe("delivery.*", flaky, name="test.flaky")
    try:
        events.record_event("delivery.failed", {}, idempotency_key="d1", now=NOW)
        assert events.handle_due(now=NOW)["failed"] == 1
        handling = EventHandling.objects.get()
        assert (handling.status, handling.attempts) == ("failed", 1)
        assert handling.last_error == "RuntimeError: partner API down"
        assert handling.next_attempt_at == NOW + timedelta(seconds=30)
        assert events.handle_due(now=NOW + timedelta(seconds=10))["failed"] == 0  # not yet due
        assert events.handle_due(now=NOW + timedelta(seconds=30))["failed"] == 1
        assert events.handle_due(now=NOW + timedelta(seconds=90))["done"] == 1
        handling.refresh_from_db()
        assert (handling.status, handling.attempts, handling.last_error) == ("done", 3, "")
        assert len(attempts) == 3
    finally:
        events._subscribers.pop("test.flaky")


def test_a_handling_gives_up_after_five_attempts():
    def broken(event):
        raise ValueError("bad payload")

    events.subscribe("x.*", broken, name="test.broken")
    try:
        events.record_event("x.y", {}, idempotency_key="x1", now=NOW)
        now = NOW
        outcomes = []
        for _ in range(5):
            result = events.handle_due(now=now)
            outcomes.append("gave_up" if result["gave_up"] else "failed")
            now = EventHandling.objects.get().next_attempt_at
        assert outcomes == ["failed"] * 4 + ["gave_up"]
        assert events.handle_due(now=now + timedelta(days=1)) == {
            "done": 0,
            "failed": 0,
            "gave_up": 0,
        }
    finally:
        events._subscribers.pop("test.broken")


@pytest.mark.postgres
def test_a_subscriber_name_too_long_for_its_column_fails_rather_than_being_cut_short():
    assert connection.vendor == "postgresql"
    name = "test." + "x" * 200  # the column holds 200
    events.subscribe("long.*", lambda event: None, name=name)
    try:
        with pytest.raises(DataError):
            events.record_events([events.NewEvent("long.one", {}, "long:1")], now=NOW)
    finally:
        events._subscribers.pop(name)
    assert not EventHandling.objects.filter(subscriber__startswith="test.xxx").exists()
