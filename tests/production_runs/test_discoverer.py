from datetime import timedelta

import pytest

from notifications.models import Event
from production_runs import discoverer
from production_runs.discoverer import (
    READ_FIELDS,
    RunRow,
    Thresholds,
    active_runs,
    bucket_filter,
    classify,
    discover_reminders,
    with_classification,
    with_idle_since,
)
from production_runs.models import (
    ACTIVE_STATUSES,
    ProductionRun,
    ReminderSettings,
    ReminderState,
    RunStatus,
)
from production_runs.runs import run_step
from production_runs.tasks import discover_reminders_task
from tests.production_runs.factories import (
    DAY,
    HOUR,
    NOW,
    ProgressUpdateFactory,
    RunFactory,
    idle_run,
    not_started_run,
    pending_run,
)

pytestmark = pytest.mark.django_db
MINUTE = timedelta(minutes=1)


def kinds_emitted() -> dict[int, str]:
    return {
        e.payload["production_run_id"]: e.payload["reminder_kind"]
        for e in Event.objects.filter(name__startswith="production_run.reminder_")
    }


# --- playbook step 1: the reads and the classification add up ------------------------------


def test_read_counts_match_the_active_runs_and_buckets_plus_skips_add_up():
    stalled = [pending_run(), pending_run(), not_started_run(), idle_run()]
    pending_run(age=2 * HOUR)  # not overdue yet
    RunFactory(partner=None)  # no partner
    RunFactory(status=RunStatus.COMPLETED)
    RunFactory(status=RunStatus.CANCELLED)
    RunFactory(status=RunStatus.DRAFT)

    summary = discover_reminders(now=NOW, chunk_size=2)

    active = ProductionRun.objects.filter(status__in=["sent_to_partner", "in_progress"]).count()
    assert summary["total_inspected"] == active == 6
    assert summary["counts"] == {"assignment_pending": 2, "not_started": 1, "idle": 1}
    assert (summary["skipped_no_partner"], summary["skipped_not_overdue"]) == (1, 1)
    assert (
        sum(summary["counts"].values())
        + summary["skipped_no_partner"]
        + summary["skipped_not_overdue"]
        == summary["total_inspected"]
    )
    assert summary["dispatched"] == len(stalled) and summary["failed"] == 0
    assert sorted(kinds_emitted()) == sorted(run.id for run in stalled)


def test_every_active_run_is_read_however_many_there_are():
    runs = [pending_run() for _ in range(23)]
    seen = []

    summary = discover_reminders(now=NOW, dry_run=True, chunk_size=5, progress=seen.append)

    assert summary["total_inspected"] == len(runs)
    assert seen == [5, 10, 15, 20, 23]  # progress after every page, no cap


def test_each_reminder_event_carries_the_seed_payload_and_a_per_day_key():
    run = not_started_run()
    discover_reminders(now=NOW)
    event = Event.objects.get()
    assert event.name == "production_run.reminder_not_started"
    assert event.payload == {
        "production_run_id": run.id,
        "partner_id": run.partner_id,
        "design_id": run.design_id,
        "reminder_kind": "not_started",
    }
    assert event.idempotency_key == f"production_run:{run.id}:reminder:2026-11-23"


def test_the_reminder_date_is_the_day_in_india_not_in_utc():
    run = pending_run()
    late_evening_utc = NOW.replace(hour=20)  # already Tuesday 01:30 in Asia/Kolkata
    discover_reminders(now=late_evening_utc)
    assert Event.objects.get().idempotency_key.endswith(":reminder:2026-11-24")
    assert run.id in kinds_emitted()


def test_two_runs_of_the_discoverer_the_same_day_emit_one_event_per_run():
    pending_run()
    idle_run()
    first = discover_reminders(now=NOW)
    second = discover_reminders(now=NOW + MINUTE)
    assert first["dispatched"] == 2
    # Reminded today already: counted as such, not as waiting for an escalation day.
    assert second["dispatched"] == 0 and second["already_emitted"] == 2
    assert second["skipped_not_due"] == 0
    assert Event.objects.count() == 2


def test_a_dry_run_classifies_but_emits_and_changes_nothing():
    pending_run()
    summary = discover_reminders(now=NOW, dry_run=True)
    assert summary["counts"]["assignment_pending"] == 1
    assert summary["dispatched"] == 1 and summary["dry_run"] is True
    assert not Event.objects.exists() and not ReminderState.objects.exists()


def test_runs_without_a_partner_are_dropped_before_classification():
    RunFactory(partner=None, created_at=NOW - 30 * DAY)
    summary = discover_reminders(now=NOW)
    assert summary["skipped_no_partner"] == 1
    assert summary["counts"] == {"assignment_pending": 0, "not_started": 0, "idle": 0}
    assert not Event.objects.exists()


def test_a_failing_run_is_counted_and_the_rest_still_get_their_events(monkeypatch):
    bad, good = pending_run(), pending_run()
    real_one, real_many = discoverer.record_event, discoverer.record_events

    def record_event(name, payload, **kwargs):
        if payload["production_run_id"] == bad.id:
            raise RuntimeError("ledger unavailable for this row")
        return real_one(name, payload, **kwargs)

    def record_events(new, **kwargs):
        if any(e.payload["production_run_id"] == bad.id for e in new):
            raise RuntimeError("ledger unavailable for this row")
        return real_many(new, **kwargs)

    monkeypatch.setattr(discoverer, "record_event", record_event)
    monkeypatch.setattr(discoverer, "record_events", record_events)
    summary = discover_reminders(now=NOW)
    assert (summary["dispatched"], summary["failed"]) == (1, 1)
    assert "ledger unavailable" in summary["errors"][0]
    assert list(kinds_emitted()) == [good.id]
    assert not ReminderState.objects.filter(run=bad).exists()  # retried tomorrow


def test_a_page_whose_bulk_write_fails_goes_one_run_at_a_time_and_counts_once(monkeypatch):
    """The lot fails after its escalation states were counted in memory: the runs are then
    recorded one by one, each counted once (reminder_count 1, not 2)."""
    runs = [pending_run(), not_started_run(), idle_run()]
    real = ReminderState.objects.bulk_update

    def failing_bulk_update(*args, **kwargs):
        raise RuntimeError("disk full")

    with_state = runs[0]
    ReminderState.objects.create(
        run=with_state,
        kind="assignment_pending",
        stalled_since=with_state.created_at,
        first_overdue_at=NOW - 3 * DAY,
        reminder_count=1,
        last_reminded_at=NOW - 3 * DAY,
    )
    monkeypatch.setattr(ReminderState.objects, "bulk_update", failing_bulk_update)
    summary = discover_reminders(now=NOW)
    monkeypatch.setattr(ReminderState.objects, "bulk_update", real)
    assert (summary["dispatched"], summary["failed"], summary["events"]) == (3, 0, 3)
    assert sorted(kinds_emitted()) == sorted(r.id for r in runs)
    counts = dict(ReminderState.objects.values_list("run_id", "reminder_count"))
    assert counts == {runs[0].id: 2, runs[1].id: 1, runs[2].id: 1}


def test_a_pages_reminders_cost_the_same_queries_for_ten_runs_as_for_forty():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries_for(count, at):
        for _ in range(count):
            pending_run()
        with CaptureQueriesContext(connection) as captured:
            summary = discover_reminders(now=at)
        assert summary["dispatched"] == count
        Event.objects.all().delete()
        ProductionRun.objects.all().delete()
        return len(captured)

    assert queries_for(40, NOW) == queries_for(10, NOW)


def test_the_page_query_is_compiled_once_and_each_page_is_one_query(monkeypatch):
    """The classification is compiled once for the whole read, not once per page; each
    page is then one statement with its own keyset bound."""
    from django.db import connection
    from django.db.models.sql.compiler import SQLCompiler
    from django.test.utils import CaptureQueriesContext

    young = pending_run(age=HOUR)
    runs = [pending_run() for _ in range(5)] + [young] + [idle_run() for _ in range(5)]
    runs.append(RunFactory(partner=None))
    cutoffs = Thresholds.of(ReminderSettings.load()).cutoffs(NOW)
    compiled = []
    real = SQLCompiler.as_sql

    def as_sql(self, *args, **kwargs):
        if self.query.model is ProductionRun:
            compiled.append(self.query)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SQLCompiler, "as_sql", as_sql)
    with CaptureQueriesContext(connection) as captured:
        pages = list(active_runs(cutoffs=cutoffs, chunk_size=5))
    monkeypatch.setattr(SQLCompiler, "as_sql", real)

    assert [len(page) for page in pages] == [5, 5, 2]
    assert len(compiled) == 1
    assert len(captured) == len(pages) + 1  # and the empty page that ends the read
    read = [row for page in pages for row in page]
    assert [row.id for row in read] == sorted(run.id for run in runs)
    assert read == [
        RunRow(*row)
        for row in with_classification(
            ProductionRun.objects.filter(status__in=ACTIVE_STATUSES), cutoffs
        )
        .order_by("id")
        .values_list(*READ_FIELDS)
    ]
    assert [row.id for row in read if row.overdue is None] == [young.id]


def test_reminders_are_written_in_batches_of_a_chunk_not_one_per_page(monkeypatch):
    """A page holds a few stalled runs among many: their reminders are gathered over pages
    into batches of about `chunk_size` (a transaction and a worker hint each)."""
    batches = []
    real = discoverer.record_events

    def record_events(new, **kwargs):
        batches.append(len(new))
        return real(new, **kwargs)

    monkeypatch.setattr(discoverer, "record_events", record_events)
    for index in range(40):  # 10 stalled, one in each page of 4
        pending_run(age=2 * DAY if index % 4 == 0 else HOUR)

    summary = discover_reminders(now=NOW, chunk_size=4)

    assert summary["dispatched"] == 10 and summary["total_inspected"] == 40
    assert batches == [4, 4, 2]
    assert len(kinds_emitted()) == 10 and ReminderState.objects.count() == 10


def test_the_celery_task_runs_the_discoverer_now(clock):
    pending_run()
    summary = discover_reminders_task()
    assert summary["dispatched"] == 1 and summary["at"] == NOW.isoformat()


# --- classification at the exact thresholds ------------------------------------------------


@pytest.mark.parametrize(
    ("make", "threshold"),
    [(pending_run, 24 * HOUR), (not_started_run, 24 * HOUR), (idle_run, 72 * HOUR)],
    ids=["assignment_pending", "not_started", "idle"],
)
def test_a_run_is_overdue_one_minute_after_its_threshold_not_one_minute_before(make, threshold):
    early = make(age=threshold - MINUTE)
    late = make(age=threshold + MINUTE)
    summary = discover_reminders(now=NOW)
    assert sum(summary["counts"].values()) == 1
    assert summary["skipped_not_overdue"] == 1
    assert list(kinds_emitted()) == [late.id]
    assert early.id not in kinds_emitted()


def test_a_run_drafted_long_ago_waits_for_acceptance_from_when_it_was_sent():
    run = RunFactory(status=RunStatus.DRAFT, created_at=NOW - 10 * DAY)
    assert run_step(run=run, step="send", now=NOW)

    # Just sent: not overdue, however long it was a draft.
    assert discover_reminders(now=NOW + HOUR)["counts"]["assignment_pending"] == 0
    # A day after it was sent, it is.
    summary = discover_reminders(now=NOW + DAY + MINUTE)
    assert summary["counts"]["assignment_pending"] == 1
    assert summary["sample"][0]["stalled_since"] == NOW.isoformat()


def test_thresholds_come_from_the_settings_row():
    ReminderSettings.objects.filter(pk=1).update(assignment_pending_hours=48, idle_hours=24)
    young = pending_run(age=47 * HOUR)
    quiet = idle_run(age=25 * HOUR)
    discover_reminders(now=NOW)
    assert kinds_emitted() == {quiet.id: "idle"}
    assert young.id not in kinds_emitted()


def test_idle_is_measured_from_the_latest_progress_update():
    reporting = idle_run(age=14 * DAY)
    ProgressUpdateFactory(run=reporting, at=NOW - 71 * HOUR)
    silent = idle_run(age=14 * DAY)
    ProgressUpdateFactory(run=silent, at=NOW - 73 * HOUR)
    ProgressUpdateFactory(run=silent, at=NOW - 10 * DAY)
    discover_reminders(now=NOW)
    assert kinds_emitted() == {silent.id: "idle"}


def test_the_admin_bucket_filter_agrees_with_the_classifier():
    runs = [
        pending_run(),
        pending_run(age=23 * HOUR),
        not_started_run(),
        not_started_run(age=20 * HOUR),
        idle_run(),
        idle_run(age=2 * DAY),
    ]
    ProgressUpdateFactory(run=runs[4], at=NOW - 4 * DAY)
    thresholds = Thresholds.of(ReminderSettings.load())
    annotated = with_idle_since(ProductionRun.objects.all())
    for kind in ("assignment_pending", "not_started", "idle"):
        by_filter = set(
            annotated.filter(bucket_filter(kind, now=NOW, thresholds=thresholds)).values_list(
                "id", flat=True
            )
        )
        by_classify = {
            run.id
            for run in annotated
            if (classify(run, now=NOW, thresholds=thresholds) or ("",))[0] == kind
        }
        assert by_filter == by_classify and len(by_filter) == 1


# --- escalation: day 1, 3, 7, then weekly --------------------------------------------------


def reminded_days(run, *, days: int, weekdays_only: bool = False) -> list[int]:
    reminded = []
    for day in range(1, days + 1):
        at = NOW + (day - 1) * DAY
        if weekdays_only and at.weekday() >= 5:
            continue
        before = Event.objects.count()
        discover_reminders(now=at)
        if Event.objects.count() > before:
            reminded.append(day)
    return reminded


def test_a_stalled_run_is_reminded_on_day_1_3_7_then_weekly():
    run = pending_run()
    assert reminded_days(run, days=29) == [1, 3, 7, 14, 21, 28]


def test_a_step_that_falls_on_a_weekend_is_caught_up_on_the_next_weekday():
    run = pending_run()
    # Monday is day 1: day 7 is Sunday (no run), so the third reminder goes on Monday, day 8.
    assert reminded_days(run, days=15, weekdays_only=True)[:3] == [1, 3, 8]


def test_a_run_still_stalled_seven_days_into_its_reminders_is_flagged_for_ops():
    """Seed 002: ">= 7 consecutive days" of reminders, i.e. day 7 (the third reminder on
    the default escalation), not the seventh reminder (day 35)."""
    run = pending_run()
    reminded = reminded_days(run, days=35)
    state = ReminderState.objects.get(run=run)
    assert len(reminded) == 7 and state.reminder_count == 7
    assert state.flagged_at == NOW + 6 * DAY


def test_a_run_that_moves_starts_a_new_stall_from_day_1():
    run = pending_run()
    discover_reminders(now=NOW)
    ProductionRun.objects.filter(pk=run.pk).update(accepted_at=NOW + HOUR)
    # Day 3 of the first stall would have been a step, but it is a new stall now.
    assert discover_reminders(now=NOW + DAY)["skipped_not_overdue"] == 1
    assert not ReminderState.objects.filter(run=run).exists()
    summary = discover_reminders(now=NOW + 2 * DAY)
    assert summary["counts"]["not_started"] == 1 and summary["dispatched"] == 1
    state = ReminderState.objects.get(run=run)
    assert (state.kind, state.reminder_count) == ("not_started", 1)


def test_the_seed_daily_cadence_is_one_setting_away():
    ReminderSettings.objects.filter(pk=1).update(escalation_days="1", escalation_repeat_days=1)
    run = pending_run()
    assert reminded_days(run, days=5) == [1, 2, 3, 4, 5]


# --- digest: one event per partner and bucket ---------------------------------------------


def test_the_digest_groups_runs_per_partner_and_bucket():
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=True)
    first = pending_run()
    partner = first.partner
    second = pending_run(partner=partner)
    quiet = idle_run(partner=partner)
    other = pending_run()

    summary = discover_reminders(now=NOW)

    assert summary["dispatched"] == 4 and summary["events"] == 3
    assert not Event.objects.filter(name__startswith="production_run.reminder_").exists()
    digests = {
        (e.payload["partner_id"], e.name): sorted(e.payload["production_run_ids"])
        for e in Event.objects.all()
    }
    assert digests == {
        (partner.id, "production_run.digest_assignment_pending"): sorted([first.id, second.id]),
        (partner.id, "production_run.digest_idle"): [quiet.id],
        (other.partner_id, "production_run.digest_assignment_pending"): [other.id],
    }
    assert ReminderState.objects.count() == 4  # escalation still tracked per run
    assert discover_reminders(now=NOW + HOUR)["events"] == 0
