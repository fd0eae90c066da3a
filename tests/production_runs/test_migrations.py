"""Data migrations of production_runs, run forward from the migration before them."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)


def _migrate(target):
    executor = MigrationExecutor(connection)
    executor.migrate(target)
    executor.loader.build_graph()
    return executor.loader.project_state(target).apps


@pytest.mark.parametrize(
    ("count", "steps", "repeat", "day"),
    [(7, "1,3,7", 7, 7), (3, "1,3,7", 7, 7), (5, "1,3,7", 7, 21), (2, "1,2,5", 3, 2)],
)
def test_a_reminder_count_someone_set_becomes_the_day_it_flagged_on(count, steps, repeat, day):
    apps = _migrate([("production_runs", "0005_reminder_settings_bounds")])
    ReminderSettings = apps.get_model("production_runs", "ReminderSettings")
    ReminderSettings.objects.update_or_create(
        pk=1,
        defaults={
            "flag_after_reminders": count,
            "escalation_days": steps,
            "escalation_repeat_days": repeat,
        },
    )
    try:
        apps = _migrate([("production_runs", "0006_flag_after_days")])
        ReminderSettings = apps.get_model("production_runs", "ReminderSettings")
        assert ReminderSettings.objects.get(pk=1).flag_after_days == day
    finally:
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def test_a_digest_mapping_ticked_for_the_design_image_is_unticked():
    apps = _migrate([("production_runs", "0007_flag_help")])
    Mapping = apps.get_model("production_runs", "EventTemplateMapping")
    for event, template in [
        ("production_run.digest_idle", "jyt_production_run_digest_idle_v1"),
        ("production_run.reminder_idle", "jyt_production_run_reminder_idle_v1"),
    ]:
        Mapping.objects.update_or_create(
            event_name=event, defaults={"template_name": template, "send_design_image": True}
        )
    try:
        apps = _migrate([("production_runs", "0008_digest_mappings_send_no_image")])
        Mapping = apps.get_model("production_runs", "EventTemplateMapping")
        ticked = dict(
            Mapping.objects.filter(
                event_name__in=["production_run.digest_idle", "production_run.reminder_idle"]
            ).values_list("event_name", "send_design_image")
        )
        assert ticked == {"production_run.digest_idle": False, "production_run.reminder_idle": True}
    finally:
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
