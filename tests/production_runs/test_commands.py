import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from config.schedules import SCHEDULES
from notifications.models import Event
from production_runs.management.commands.discover_reminders import Command as DiscoverCommand
from tests.production_runs.factories import NOW, RunFactory, idle_run, pending_run

pytestmark = pytest.mark.django_db


def discover(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("discover_reminders", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_discover_reminders_prints_the_summary_with_progress():
    pending_run()
    idle_run()
    RunFactory(partner=None)
    out, err = discover("--at", "2026-11-23T10:00:00+05:30", "--chunk-size", "2")
    assert "Reminder run at 2026-11-23T10:00:00+05:30 (2026-11-23 Asia/Kolkata)" in out
    assert "inspected (active runs)" in out and "      3" in out
    assert "skipped: no partner" in out
    assert "… 2 runs inspected" in err and "… 3 runs inspected" in err
    assert Event.objects.count() == 2


def test_discover_reminders_dry_run_json_emits_nothing():
    pending_run()
    out, _ = discover("--at", NOW.isoformat(), "--dry-run", "--json")
    summary = json.loads(out)
    assert summary["dry_run"] is True and summary["counts"]["assignment_pending"] == 1
    assert summary["dispatched"] == 1 and not Event.objects.exists()


def test_a_bad_at_is_refused_where_it_was_given():
    with pytest.raises(CommandError, match="ISO 8601"):
        discover("--at", "tomorrow")


def test_an_at_without_an_offset_is_read_in_the_project_time_zone(settings):
    pending_run()
    out, _ = discover("--at", "2026-11-23T10:00:00", "--dry-run", "--json")
    assert json.loads(out)["at"] == "2026-11-23T10:00:00+00:00"  # TIME_ZONE is UTC
    settings.TIME_ZONE = "Asia/Kolkata"
    out, _ = discover("--at", "2026-11-23T10:00:00", "--dry-run", "--json")
    assert json.loads(out)["at"] == "2026-11-23T10:00:00+05:30"


@pytest.mark.parametrize(
    ("at", "problem"),
    [
        ("2026-03-29T01:30", "does not exist in Europe/London"),  # clocks go forward
        ("2026-10-25T01:30", "happens twice in Europe/London"),  # clocks go back
    ],
    ids=["skipped", "repeated"],
)
def test_an_at_without_an_offset_that_the_clock_change_skips_or_repeats_is_refused(
    settings, at, problem
):
    settings.TIME_ZONE = "Europe/London"
    pending_run()
    with pytest.raises(CommandError, match=f"{problem}.*give an offset"):
        discover("--at", at)
    assert not Event.objects.exists()
    # With an offset it is one moment, and taken.
    out, _ = discover("--at", f"{at}+01:00", "--dry-run", "--json")
    assert json.loads(out)["at"] == f"{at}:00+01:00"


def test_discover_reminders_help_says_it_runs_any_day_by_hand_and_beat_keeps_to_weekdays():
    schedule = next(s for s in SCHEDULES if s.task == "herald.discover_reminders")
    assert (schedule.crontab["day_of_week"], schedule.crontab["timezone"]) == (
        "1-5",
        "Asia/Kolkata",
    )
    text = " ".join(
        DiscoverCommand().create_parser("manage.py", "discover_reminders").description.split()
    )
    assert "Run by hand, it runs on whatever day it is given, weekends included" in text
    assert "10:00 Asia/Kolkata, Mon-Fri, crontab day_of_week 1-5" in text
