import pytest
from django.core.management import call_command
from django_celery_beat.models import PeriodicTask

from config.schedules import SCHEDULES, WAITING_FOR_TASK, setup_schedules

ALL_TASKS = {spec.task for spec in SCHEDULES}
DISCOVER = "Discover production-run reminders (10:00 Asia/Kolkata, Mon-Fri)"

pytestmark = pytest.mark.django_db


def test_running_it_twice_changes_nothing():
    first = setup_schedules(registered_tasks=ALL_TASKS)
    before = list(PeriodicTask.objects.values().order_by("id"))
    second = setup_schedules(registered_tasks=ALL_TASKS)
    assert set(first.values()) == {"created"}
    assert set(second.values()) == {"unchanged"}
    after = list(PeriodicTask.objects.values().order_by("id"))
    assert [{**row, "date_changed": None} for row in after] == [
        {**row, "date_changed": None} for row in before
    ]
    assert len(after) == len(SCHEDULES) == 6


def test_discoverer_crontab_carries_asia_kolkata_and_starts_disabled():
    setup_schedules(registered_tasks=ALL_TASKS)
    task = PeriodicTask.objects.get(name=DISCOVER)
    crontab = task.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_week) == ("0", "10", "1-5")
    assert str(crontab.timezone) == "Asia/Kolkata"
    assert task.enabled is False


def test_cadences_of_the_other_schedules():
    setup_schedules(registered_tasks=ALL_TASKS)
    by_task = {t.task: t for t in PeriodicTask.objects.all()}
    assert by_task["herald.evaluate_triggers"].interval.every == 300
    assert by_task["herald.dispatch_due"].interval.every == 60
    assert by_task["herald.run_verify_checks"].crontab.minute == "8,38"
    assert by_task["herald.sweep_staged_attachments"].interval.every == 3600


def test_a_schedule_edited_in_the_admin_survives_a_rerun():
    setup_schedules(registered_tasks=ALL_TASKS)
    PeriodicTask.objects.filter(task="herald.dispatch_due").update(enabled=False)
    setup_schedules(registered_tasks=ALL_TASKS)
    assert PeriodicTask.objects.get(task="herald.dispatch_due").enabled is False


def test_a_schedule_waits_for_its_task_then_is_enabled_once_installed():
    setup_schedules(registered_tasks=ALL_TASKS - {"herald.run_verify_checks"})
    waiting = PeriodicTask.objects.get(task="herald.run_verify_checks")
    assert (waiting.enabled, waiting.description) == (False, WAITING_FOR_TASK)

    outcome = setup_schedules(registered_tasks=ALL_TASKS)

    waiting.refresh_from_db()
    assert waiting.enabled is True
    assert outcome["Run verify checks at :08 and :38"] == "enabled"


def test_command_prints_one_line_per_schedule(capsys):
    call_command("setup_schedules")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(SCHEDULES)
    assert PeriodicTask.objects.count() == len(SCHEDULES)
