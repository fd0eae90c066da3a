import json

from django.core.management.base import BaseCommand
from django.utils import timezone

from notifications.cli import parse_at
from notifications.dispatch import dispatch_due


class Command(BaseCommand):
    help = (
        "Send every delivery that is due: marks rows stuck in 'sending' as unknown, expires "
        "overdue rows, claims and sends the rest at each sender's pace, schedules retries. "
        "Prints the counts: sent, failed, retried, expired, deferred (paced, breaker open or "
        "moved to a fallback channel), unknown (to reconcile), skipped (suppressed), frozen "
        "(held by a kill switch)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--at", type=parse_at, help="ISO 8601 time to act as 'now'")
        parser.add_argument("--limit", type=int, help="handle at most this many deliveries")
        parser.add_argument(
            "--json", dest="as_json", action="store_true", help="print the counts as JSON"
        )

    def handle(self, *args, at, limit, as_json, **options):
        report = dispatch_due(now=at or timezone.now(), limit=limit).as_dict()
        if as_json:
            self.stdout.write(json.dumps(report, sort_keys=True))
        else:
            self.stdout.write("  ".join(f"{name}={count}" for name, count in report.items()))
