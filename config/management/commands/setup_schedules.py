from django.core.management.base import BaseCommand

from config.schedules import setup_schedules


class Command(BaseCommand):
    help = (
        "Create Herald's periodic tasks (django-celery-beat) that do not exist yet. "
        "Idempotent: existing schedules keep any edits made in the admin."
    )

    def handle(self, *args, **options):
        for name, outcome in setup_schedules().items():
            self.stdout.write(f"{outcome:>9}  {name}")
