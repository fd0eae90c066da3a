"""The dispatcher's event → template map a fresh install starts with, and the reminder
settings row with its defaults (24 h / 24 h / 72 h, escalation 1,3,7 then weekly, no digest).
The data is written out here (not imported) so this migration never changes meaning."""

from django.db import migrations

DEFAULT_TEMPLATE_MAP = {
    "production_run.sent_to_partner": ("jyt_production_run_assigned_v1", True),
    "production_run.cancelled": ("jyt_production_run_cancelled_v1", False),
    "production_run.completed": ("jyt_production_run_completed_v1", False),
    "production_run.reminder_assignment_pending": ("jyt_production_run_reminder_pending_v1", True),
    "production_run.reminder_not_started": ("jyt_production_run_reminder_not_started_v1", True),
    "production_run.reminder_idle": ("jyt_production_run_reminder_idle_v1", True),
    "production_run.digest_assignment_pending": ("jyt_production_run_digest_pending_v1", False),
    "production_run.digest_not_started": ("jyt_production_run_digest_not_started_v1", False),
    "production_run.digest_idle": ("jyt_production_run_digest_idle_v1", False),
}


def forwards(apps, schema_editor):
    Mapping = apps.get_model("production_runs", "EventTemplateMapping")
    for event_name, (template, image) in DEFAULT_TEMPLATE_MAP.items():
        Mapping.objects.get_or_create(
            event_name=event_name,
            defaults={"template_name": template, "send_design_image": image},
        )
    apps.get_model("production_runs", "ReminderSettings").objects.get_or_create(pk=1)


class Migration(migrations.Migration):
    dependencies = [("production_runs", "0001_initial")]

    operations = [migrations.RunPython(forwards, migrations.RunPython.noop)]
