import json

from django.core.management.base import BaseCommand
from django.utils import timezone

from notifications.batch import run_verify_checks
from notifications.cli import at_help, parse_at


class Command(BaseCommand):
    help = (
        "Run the pending verify checks whose window has passed (e.g. all_recipients_logged "
        "after a batch) and flip each to pass, fail or timeout. Beat runs this at :08 and :38."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--at",
            type=parse_at,
            help=at_help("to act as 'now'"),
        )
        parser.add_argument(
            "--json", dest="as_json", action="store_true", help="print the counts as JSON"
        )

    def handle(self, *args, at, as_json, **options):
        counts = run_verify_checks(now=at or timezone.now())
        if as_json:
            self.stdout.write(json.dumps(counts, sort_keys=True))
        else:
            self.stdout.write("  ".join(f"{k}={v}" for k, v in counts.items()))
