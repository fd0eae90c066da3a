import json

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from notifications.cli import at_help, parse_at
from production_runs.discoverer import KINDS, discover_reminders
from production_runs.models import ACTIVE_STATUSES, ProductionRun

ROWS = [
    ("total_inspected", "inspected (active runs)"),
    *[(kind, kind) for kind in KINDS],
    ("skipped_no_partner", "skipped: no partner"),
    ("skipped_not_overdue", "skipped: not overdue"),
    ("skipped_not_due", "skipped: not due (escalation)"),
    ("skipped_no_whatsapp_number", "not reminded: no WhatsApp number"),
    ("already_emitted", "already emitted today"),
    ("dispatched", "dispatched"),
    ("events", "events emitted"),
    ("failed", "failed"),
    ("flagged", "newly flagged for ops"),
]
# A dry run emits nothing: it says what a real run would do (as the admin's dry-run page
# does), and leaves out what only emitting works out (failed). The runs reminded today and
# the stalls it would flag it does know (their escalation state says so).
DRY_RUN_LABELS = {
    "already_emitted": "already reminded today",
    "dispatched": "would be reminded",
    "events": "events it would emit",
    "flagged": "would be flagged for ops",
}
DRY_RUN_SKIPS = {"failed"}


class Command(BaseCommand):
    help = (
        "Find stalled production runs and emit one reminder event per run (seed 002's daily "
        "discoverer; the dispatcher sends the WhatsApp messages). --dry-run classifies and "
        "reports without emitting anything. A stalled run whose partner has no WhatsApp "
        "number is not reminded (no event; it is counted and its partner listed, with where "
        "to add the number). Run by hand, it runs on whatever day it is "
        "given, weekends included: the discoverer does not look at the weekday. Only beat's "
        "schedule keeps to weekdays (as set up by setup_schedules: 10:00 Asia/Kolkata, "
        "Mon-Fri, crontab day_of_week 1-5; it starts disabled and can be edited in the admin)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--at",
            type=parse_at,
            help=at_help("to act as 'now'")
            + (
                ". Not a preview: "
                "the command really emits the reminder events due at that time (keyed by "
                "that day in Asia/Kolkata, for the dispatcher to send) and records those "
                "reminders as escalation steps and any ops flags at that time, so a time "
                "ahead of the clock holds those runs' next reminders until after it. The "
                "events are recorded at that time: the dispatcher does not handle them "
                "before it, so for a time ahead of the clock no message is staged or sent "
                "until then; the messages expire at the end of that day (Asia/Kolkata), so "
                "for a day already over they are never sent. Use --dry-run to preview"
            ),
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="classify and report only; emit nothing"
        )
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")
        parser.add_argument(
            "--chunk-size",
            type=int,
            default=500,
            help="runs read per page and reminders written per batch, at least 1 "
            "(default: %(default)s)",
        )

    def handle(self, *args, at, dry_run, json: bool, chunk_size, **options):
        if chunk_size < 1:
            raise CommandError("--chunk-size must be at least 1")
        active = ProductionRun.objects.filter(status__in=ACTIVE_STATUSES).count()
        self.stderr.write(f"classifying {active} active run(s)")

        def progress(inspected: int) -> None:
            self.stderr.write(f"  … {inspected} runs inspected of {active}")

        summary = discover_reminders(
            now=at or timezone.now(), dry_run=dry_run, chunk_size=chunk_size, progress=progress
        )
        if json:
            self.stdout.write(_json(summary))
            return
        mode = " — DRY RUN, nothing emitted" if dry_run else ""
        digest = " (digest: one event per partner and bucket)" if summary["digest"] else ""
        self.stdout.write(f"Reminder run at {summary['at']} ({summary['date']} Asia/Kolkata){mode}")
        for key, label in ROWS:
            if dry_run:
                if key in DRY_RUN_SKIPS:
                    continue
                label = DRY_RUN_LABELS.get(key, label)
            value = summary["counts"][key] if key in KINDS else summary[key]
            self.stdout.write(f"  {label:<32}{value:>7}")
        if digest:
            self.stdout.write(f"  {digest.strip()}")
        for line in unreachable_lines(summary):
            self.stdout.write(self.style.WARNING(line))
        for error in summary["errors"]:
            self.stderr.write(self.style.ERROR(f"  {error}"))


def unreachable_lines(summary: dict) -> list[str]:
    """The partners whose due runs could not be reminded, and where to add their number."""
    lines = []
    for entry in summary["no_whatsapp_number"]:
        runs = ", ".join(str(run) for run in entry["runs"])
        lines.append(
            f"  partner {entry['partner']} ({entry['partner_name']}) could not be reminded of "
            f"run(s) {runs}: it has no WhatsApp number. Add it in the admin (Production runs "
            f"→ Partners → {entry['partner_name']}: {entry['add_number_at']})."
        )
    listed = sum(len(entry["runs"]) for entry in summary["no_whatsapp_number"])
    if summary["skipped_no_whatsapp_number"] > listed:
        lines.append(
            f"  … and {summary['skipped_no_whatsapp_number'] - listed} more run(s) of partners "
            "without a WhatsApp number (Production runs → Partners, sorted by WhatsApp number)"
        )
    return lines


def _json(summary: dict) -> str:
    return json.dumps(summary, indent=2, ensure_ascii=False)
