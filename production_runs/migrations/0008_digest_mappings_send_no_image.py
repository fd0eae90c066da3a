from django.db import migrations


def untick_digest_design_image(apps, schema_editor):
    """A digest is never followed by the design image (it names several runs). Since
    c60b74d a digest mapping refuses "send design image" on save; a row ticked before that
    is unticked here, so that it no longer reads as if an image followed."""
    EventTemplateMapping = apps.get_model("production_runs", "EventTemplateMapping")
    EventTemplateMapping.objects.filter(
        event_name__startswith="production_run.digest_", send_design_image=True
    ).update(send_design_image=False)


class Migration(migrations.Migration):
    dependencies = [
        ("production_runs", "0007_flag_help"),
    ]

    operations = [
        migrations.RunPython(untick_digest_design_image, migrations.RunPython.noop),
    ]
