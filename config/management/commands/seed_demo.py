import time

from django.apps import apps
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from config.demo import STEPS
from notifications.cli import at_help, parse_at


def _holds_data() -> bool:
    """Whether someone's data is here already (a user account alone is not: make run's own
    development superuser comes after the demo)."""
    return any(
        apps.get_model(label).objects.exists()
        for label in ("notifications.Customer", "production_runs.Partner", "kiosks.Project")
        + ("cadence.Persona",)
    )


class Command(BaseCommand):
    help = (
        "Load Herald's demo world (200 customers, personas and 30 stakeholders, 5 projects "
        "with 60 kiosks, 40 partners and 150 production runs, templates, workflows, past "
        "deliveries with tracking events, batches waiting for approval). Each step only adds "
        "what is missing, so running it twice changes nothing. Progress goes to stderr, the "
        "rows created per step to stdout."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--if-empty",
            action="store_true",
            help="do nothing when the database already holds customers, partners, kiosk "
            "projects or personas (used by make run)",
        )
        parser.add_argument("--at", type=parse_at, help=at_help("to seed around"))

    def handle(self, *args, if_empty, at, **options):
        if if_empty and _holds_data():
            self.stdout.write("database already has data: demo data not loaded")
            return
        now = at or timezone.now()
        total = 0
        with transaction.atomic():
            for number, (label, step) in enumerate(STEPS, start=1):
                self.stderr.write(f"[{number}/{len(STEPS)}] {label} …")
                started = time.monotonic()
                created = step(now)
                total += created
                self.stdout.write(f"{created:>6}  {label}")
                self.stderr.write(
                    f"[{number}/{len(STEPS)}] done in {time.monotonic() - started:.1f} s"
                )
        self.stdout.write(self.style.SUCCESS(f"demo data ready ({total} rows added)"))
