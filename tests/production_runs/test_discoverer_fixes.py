"""Findings of a user walkthrough of the production-run reminders, each fixed:

A. a real run `--at` a past time erased the escalation state of runs that were merely not
   overdue yet at that time (their next reminder then came on day 2, and the dry run said
   they would be reminded while a real run emitted nothing);
B. a run was flagged for ops after 7 reminders (day 35), not after 7 days (seed 002);
C. the dedup marker gave a UTC time, unlabelled, beside a key dated in Asia/Kolkata.
"""

from datetime import UTC, datetime, timedelta

import pytest

from notifications import dispatch, events
from notifications.dispatch import ManualClock
from notifications.models import Delivery, Event
from production_runs.discoverer import discover_reminders
from production_runs.management.commands.discover_reminders import Command
from production_runs.models import ProductionRun, ReminderSettings, ReminderState
from production_runs.runs import run_record_progress, run_remind_now
from tests.production_runs.factories import (
    DAY,
    HOUR,
    NOW,
    PlatformFactory,
    approve_all,
    idle_run,
    pending_run,
)

pytestmark = pytest.mark.django_db
MINUTE = timedelta(minutes=1)


def reminded_on(run, day: int) -> bool:
    """Run the discoverer on stall day `day` (day 1 is NOW); whether `run` got an event."""
    before = Event.objects.filter(payload__production_run_id=run.id).count()
    discover_reminders(now=NOW + (day - 1) * DAY)
    return Event.objects.filter(payload__production_run_id=run.id).count() > before


# --- A: a real run at a past time keeps the escalation of runs that did not move -----------


def test_a_real_run_at_a_past_time_keeps_the_escalation_state_of_runs_not_yet_overdue_then():
    run = pending_run()  # sent two days ago: overdue since yesterday
    discover_reminders(now=NOW)  # day 1: first reminder
    before = ReminderState.objects.values().get(run=run)

    # 36 hours earlier the run was 12 hours old: not overdue yet, but it has not moved.
    past = discover_reminders(now=NOW - 36 * HOUR)

    assert past["skipped_not_overdue"] == 1
    assert ReminderState.objects.values().get(run=run) == before
    # The schedule goes on: no "day 2" reminder, then days 3 and 7.
    assert [day for day in range(2, 8) if reminded_on(run, day)] == [3, 7]


def test_after_a_real_run_at_a_past_time_the_dry_run_agrees_with_a_real_run():
    runs = [pending_run() for _ in range(3)]
    discover_reminders(now=NOW)
    discover_reminders(now=NOW - 36 * HOUR)

    dry = discover_reminders(now=NOW + HOUR, dry_run=True)
    real = discover_reminders(now=NOW + HOUR)

    assert dry["dispatched"] == real["dispatched"] == 0
    # Reminded at NOW, the same day: both say so (not "waiting for an escalation day").
    assert dry["already_emitted"] == real["already_emitted"] == len(runs)
    assert dry["skipped_not_due"] == real["skipped_not_due"] == 0


def test_a_run_that_really_moved_loses_its_state_and_one_that_did_not_keeps_it_at_any_time():
    moved, still = idle_run(), idle_run()  # started four days ago, no progress since
    discover_reminders(now=NOW)
    run_record_progress(run=moved, produced_quantity=50, now=NOW + HOUR)

    # As of a day earlier neither was overdue (72 h idle threshold).
    discover_reminders(now=NOW - DAY)

    assert list(ReminderState.objects.values_list("run_id", flat=True)) == [still.id]


def test_raising_a_threshold_does_not_restart_a_stall_the_run_did_not_leave():
    run = pending_run()
    discover_reminders(now=NOW)
    ReminderSettings.objects.filter(pk=1).update(assignment_pending_hours=72)

    assert discover_reminders(now=NOW + DAY)["skipped_not_overdue"] == 1  # 3 days old: not yet

    state = ReminderState.objects.get(run=run)
    assert (state.reminder_count, state.first_overdue_at) == (1, NOW)


def test_a_real_run_at_a_time_before_the_last_reminder_reminds_nobody_again():
    run = pending_run(age=30 * DAY)
    # Found on day 1 twenty days ago, then no discoverer ran until today (day 21, caught up).
    ReminderState.objects.create(
        run=run,
        kind="assignment_pending",
        stalled_since=run.created_at,
        first_overdue_at=NOW - 20 * DAY,
        reminder_count=2,
        last_reminded_at=NOW,
    )

    summary = discover_reminders(now=NOW - 2 * DAY)

    assert summary["dispatched"] == 0 and summary["skipped_not_due"] == 1
    assert not Event.objects.exists()
    state = ReminderState.objects.get(run=run)
    assert (state.reminder_count, state.last_reminded_at) == (2, NOW)


def test_the_help_of_at_says_it_is_a_real_run_not_a_preview():
    parser = Command().create_parser("manage.py", "discover_reminders")
    at = next(action for action in parser._actions if "--at" in action.option_strings)
    assert "Not a preview" in at.help and "--dry-run to preview" in at.help


# --- B: flagged for ops after 7 days in the reminder flow, not 7 reminders ----------------


@pytest.mark.parametrize("digest", [False, True], ids=["per_run", "digest"])
def test_a_run_still_stalled_on_day_7_of_its_reminders_is_flagged_for_ops_once(digest):
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=digest)
    run = pending_run()
    flagged = {}
    for day in range(1, 16):
        flagged[day] = discover_reminders(now=NOW + (day - 1) * DAY)["flagged"]

    state = ReminderState.objects.get(run=run)
    assert state.flagged_at == NOW + 6 * DAY  # day 7 (the third reminder), not day 35
    assert state.reminder_count == 4  # days 1, 3, 7, 14
    assert [day for day, count in flagged.items() if count] == [7]


@pytest.mark.parametrize("digest", [False, True], ids=["per_run", "digest"])
def test_a_dry_run_on_the_flag_day_says_what_the_real_run_then_flags(digest):
    """A walkthrough's dry run said "flagged": 0 where the real run at the same time
    flagged 73: a run reminded on its day 7 is flagged by that reminder."""
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=digest)
    pending_run()
    for day in (1, 3):
        discover_reminders(now=NOW + (day - 1) * DAY)

    dry = discover_reminders(now=NOW + 6 * DAY, dry_run=True)
    assert ReminderState.objects.get().flagged_at is None
    real = discover_reminders(now=NOW + 6 * DAY)
    assert (dry["dispatched"], dry["flagged"]) == (real["dispatched"], real["flagged"]) == (1, 1)


def test_the_flag_comes_on_day_7_even_when_no_reminder_is_due_that_day():
    ReminderSettings.objects.filter(pk=1).update(escalation_days="1,3,10")
    run = pending_run()
    for day in range(1, 7):
        discover_reminders(now=NOW + (day - 1) * DAY)
    assert ReminderState.objects.get(run=run).flagged_at is None

    dry = discover_reminders(now=NOW + 6 * DAY, dry_run=True)
    # What a real run would flag, flagging nothing itself.
    assert ReminderState.objects.get(run=run).flagged_at is None and dry["flagged"] == 1

    day_7 = discover_reminders(now=NOW + 6 * DAY)

    assert day_7["skipped_not_due"] == 1 and day_7["dispatched"] == 0
    assert day_7["flagged"] == 1
    state = ReminderState.objects.get(run=run)
    assert (state.flagged_at, state.reminder_count) == (NOW + 6 * DAY, 2)
    assert discover_reminders(now=NOW + 7 * DAY)["flagged"] == 0  # once
    assert ReminderState.objects.get(run=run).flagged_at == NOW + 6 * DAY


def test_a_day_7_on_a_weekend_is_flagged_on_the_next_weekday():
    run = pending_run()
    for day in range(1, 9):  # Monday is day 1; day 7 is a Sunday
        at = NOW + (day - 1) * DAY
        if at.weekday() < 5:
            discover_reminders(now=at)
    assert ReminderState.objects.get(run=run).flagged_at == NOW + 7 * DAY  # Monday, day 8


def test_on_day_7_the_run_still_stalled_is_flagged_and_the_one_that_moved_is_not():
    moved, still = pending_run(), pending_run()
    for day in range(1, 6):
        discover_reminders(now=NOW + (day - 1) * DAY)
    ProductionRun.objects.filter(pk=moved.pk).update(accepted_at=NOW + 5 * DAY)  # day 6
    for day in range(6, 9):
        discover_reminders(now=NOW + (day - 1) * DAY)

    flagged = dict(ReminderState.objects.values_list("run_id", "flagged_at"))
    assert flagged == {moved.id: None, still.id: NOW + 6 * DAY}
    assert ReminderState.objects.get(run=moved).kind == "not_started"  # a new stall, day 2


# --- C: the dedup marker labels its time's zone --------------------------------------------


def test_the_dedup_marker_gives_the_time_in_the_key_dates_zone_and_in_utc_labelled(clock):
    approve_all(PlatformFactory(label="IN"))
    run = pending_run()
    sent_at = datetime(2026, 11, 22, 21, 4, tzinfo=UTC)  # 02:34 on the 23rd in Asia/Kolkata
    clock.move_to(sent_at)
    discover_reminders(now=sent_at)
    events.handle_due(now=sent_at, limit=100)
    dispatch.dispatch_due(now=sent_at, clock=ManualClock(sent_at))

    later = sent_at + 20 * MINUTE
    clock.move_to(later)
    run_remind_now(run=run, now=later, by="ops")
    events.handle_due(now=later, limit=100)

    reminders = Delivery.objects.filter(payload__template="jyt_production_run_reminder_pending_v1")
    first, marker = reminders.get(status="sent"), reminders.get(status="skipped")
    assert marker.context_key == f"production_run:{run.id}:reminder:2026-11-23"
    assert marker.status_reason.startswith(
        f"dedup: production_run:{run.id}:reminder:2026-11-23 already sent at "
        f"2026-11-23 02:34 Asia/Kolkata (2026-11-22 21:04 UTC) (delivery {first.id})"
    )
