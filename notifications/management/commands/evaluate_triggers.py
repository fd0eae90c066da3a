import json
import time

from django.core.management.base import BaseCommand
from django.utils import timezone

from notifications.cli import at_help, parse_at
from notifications.trigger_models import TriggerWorkflow
from notifications.triggers import evaluate_triggers, tick_summary


class Command(BaseCommand):
    help = (
        "Run every active trigger workflow once (what beat does every 5 minutes): each "
        "context an evaluator reports fires unless its Layer 1 cooldown holds it; each "
        "stakeholder's delivery goes now or, when their cadence holds it, at the earliest "
        "allowed time. Prints contexts found, contexts fired, held by a cooldown or not "
        "watched (summed over the workflows) and deliveries created now, queued or expired "
        "(and the other counts), then the same for each workflow (or that it failed or was "
        "not run); --json: the same, each workflow in by_workflow. Progress goes to stderr, "
        "so --json output stays clean."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--at",
            type=parse_at,
            help=at_help("to act as 'now'")
            + (
                ". Not a preview: "
                "the command really fires the contexts found, creates their deliveries and "
                "records the fires at that time, so a time ahead of the clock stamps the "
                "workflows' cooldowns in the future and holds later real fires of those "
                "contexts until that time plus the cooldown (and the deliveries created are "
                "not sent before that time)"
            ),
        )
        parser.add_argument(
            "--json", dest="as_json", action="store_true", help="print the counts as JSON"
        )

    def handle(self, *args, at, as_json, **options):
        now = at or timezone.now()
        active = TriggerWorkflow.objects.filter(is_active=True).count()
        self.stderr.write(f"evaluating {active} active trigger workflow(s) at {now:%Y-%m-%d %H:%M}")
        started = time.monotonic()
        report = evaluate_triggers(now=now)
        if report["workflows_refused_high_risk"]:
            self.stderr.write(
                f"{report['workflows_refused_high_risk']} of them not run: risk 3 or more needs "
                "an approved proposed action per side effect; lower its risk to 1 or 2"
            )
        self.stderr.write(f"done in {time.monotonic() - started:.1f} s: {tick_summary(report)}")
        if as_json:
            self.stdout.write(json.dumps(report, sort_keys=True))
        else:
            rows = report["by_workflow"]
            totals = {name: count for name, count in report.items() if name != "by_workflow"}
            self.stdout.write("  ".join(f"{name}={count}" for name, count in totals.items()))
            for row in rows:
                counts = "  ".join(f"{k}={v}" for k, v in row.items() if k != "workflow")
                self.stdout.write(f"  {row['workflow']}: {counts}")
