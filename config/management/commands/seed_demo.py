from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from config.demo import STEPS
from notifications.cli import parse_at


class Command(BaseCommand):
    help = (
        "Load Herald's demo world (templates, deliveries, ...). Each step only adds what is "
        "missing, so running it twice changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--if-empty",
            action="store_true",
            help="do nothing when the database already holds data (used by make run)",
        )
        parser.add_argument("--at", type=parse_at, help="ISO 8601 time to seed around")

    def handle(self, *args, if_empty, at, **options):
        if if_empty and get_user_model().objects.exists():
            self.stdout.write("database already has data: demo data not loaded")
            return
        now = at or timezone.now()
        with transaction.atomic():
            for label, step in STEPS:
                self.stdout.write(f"{step(now):>6}  {label}")
        self.stdout.write(self.style.SUCCESS("demo data ready"))
