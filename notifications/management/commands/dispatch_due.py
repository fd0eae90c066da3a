import json
import time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from notifications.cli import at_help, parse_at
from notifications.dispatch import DispatchReport, dispatch_due
from notifications.models import Delivery

# Outcomes of deliveries a round claimed or moved (the sweeps' unknown/expired and the
# frozen count are not work a round did on due rows).
ROUND_OUTCOMES = ("sent", "failed", "retried", "deferred", "skipped", "cancelled")
HELD = ("frozen", "breaker_held")


class Command(BaseCommand):
    help = (
        "Send every delivery that is due: marks rows stuck in 'sending' as unknown, expires "
        "overdue rows, claims and sends the rest at each sender's pace, schedules retries. "
        "Prints the counts: sent, failed, retried, expired, deferred (paced, or moved to a "
        "fallback channel while its breaker is open), unknown (to reconcile), skipped "
        "(suppressed), cancelled (by a check at send time), frozen (held by a kill switch), "
        "breaker_held (due, waiting for an open provider breaker's trial call). Works in "
        "rounds and reports each round's progress on stderr, so --json output stays clean."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--at",
            type=parse_at,
            help=at_help("to act as 'now'")
            + (
                ". Not a preview: "
                "the command really sends what is due by then (and expires and sweeps rows as "
                "of then) and records the sends at that time, so a time ahead of the clock "
                "stamps the senders' pace cursors in the future and holds later real sends by "
                "those senders until then (Admin → Senders → Restart pacing clears it)"
            ),
        )
        parser.add_argument(
            "--limit",
            type=int,
            help="handle at most this many deliveries, at least 1 (default: no limit)",
        )
        parser.add_argument(
            "--round-size",
            type=int,
            default=1000,
            help="deliveries per round, at least 1; progress is printed after each "
            "(default: %(default)s)",
        )
        parser.add_argument(
            "--json", dest="as_json", action="store_true", help="print the counts as JSON"
        )

    def handle(self, *args, at, limit, round_size, as_json, **options):
        if round_size < 1:
            raise CommandError("--round-size must be at least 1")
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1")
        now = at or timezone.now()
        due = Delivery.objects.filter(status=Delivery.Status.SCHEDULED, send_at__lte=now).count()
        cap = f" (at most {limit})" if limit is not None else ""
        self.stderr.write(f"{due} deliveries due at {now:%Y-%m-%d %H:%M:%S}{cap}")
        started = time.monotonic()
        total = DispatchReport()
        handled = 0
        while limit is None or handled < limit:
            size = round_size if limit is None else min(round_size, limit - handled)
            # With --at every round acts at that moment; otherwise at the real time.
            report = dispatch_due(now=at or timezone.now(), limit=size)
            for name, count in report.as_dict().items():
                if name not in HELD:
                    total.add(name, count)
            for name in HELD:  # counts of rows held, not of work done: the last round's
                setattr(total, name, getattr(report, name))
            moved = sum(getattr(report, name) for name in ROUND_OUTCOMES)
            handled += moved
            # A delivery moved to its fallback channel is counted, and so is the fallback
            # (sent in the same run), as is a row that fell due meanwhile.
            so_far = (
                f"{handled} handled of {due} due"
                if handled <= due
                else f"{handled} handled ({due} were due at the start; the others are "
                "fallbacks made, or rows that fell due, since)"
            )
            held = f", {total.frozen} held by a kill switch" if total.frozen else ""
            if total.breaker_held:
                held += f", {total.breaker_held} waiting for an open provider breaker"
            self.stderr.write(
                f"  … {so_far}: {total.sent} sent, {total.failed} failed, {total.retried} "
                f"retried, {total.deferred} deferred{held} "
                f"({time.monotonic() - started:.1f} s)"
            )
            if moved == 0:
                # Nothing more went: none is due, or what is left is held. A short round is
                # not the end: a breaker's trial call moves one row, and when it succeeds the
                # rest may go in the next round.
                break
        result = total.as_dict()
        if as_json:
            self.stdout.write(json.dumps(result, sort_keys=True))
        else:
            self.stdout.write("  ".join(f"{name}={count}" for name, count in result.items()))
