"""Workload 7 — discoverer: 100,000 active production runs (1,000 partners; 40 % sent to a
partner, 60 % in progress, half of those with progress updates; 1 % without a partner; about
6 % overdue across the three buckets). One `discover_reminders` run of the day on fresh
state: every overdue run gets its reminder event (and escalation state).

Targets: every active run classified (no truncation), at most 3 s on SQLite here, and a
number of queries that follows runs ÷ chunk size (plus the events it writes), not runs.
"""

from __future__ import annotations

from datetime import timedelta

from bench.db import analyze, fast_insert, wipe
from bench.harness import REPEAT, Workload, best, measure
from bench.workloads.common import Context

CHUNK = 500


def run(ctx: Context) -> Workload:
    from production_runs.discoverer import discover_reminders
    from production_runs.models import ACTIVE_STATUSES, ProductionRun

    runs = ctx.size(100_000, minimum=1_000)
    result = Workload(7, "Discoverer", f"{runs:,} active production runs, chunks of {CHUNK}")
    wipe()
    now = _build(runs)
    # Statistics after the bulk load, as autovacuum gives a production database: without
    # them PostgreSQL's plan for the read depends on whether autovacuum came by in time.
    analyze()
    heralds = []
    for _ in range(REPEAT):
        with measure("Herald: read + classify every run (dry run)", runs, "runs") as herald:
            dry = discover_reminders(now=now, chunk_size=CHUNK, dry_run=True)
        heralds.append(herald)
    herald = result.herald = best(heralds)
    with measure("Herald: the day's run (emits the events)", runs, "runs") as first:
        summary = discover_reminders(now=now, chunk_size=CHUNK)
    with measure("Herald: a second run the same day", runs, "runs") as again:
        second = discover_reminders(now=now + timedelta(minutes=5), chunk_size=CHUNK)
    result.extra += [first, again]
    assert second["dispatched"] == 0, second
    assert dry["counts"] == summary["counts"], (dry, summary)
    active = ProductionRun.objects.filter(status__in=ACTIVE_STATUSES).count()
    classified = (
        sum(summary["counts"].values())
        + summary["skipped_no_partner"]
        + summary["skipped_not_overdue"]
    )
    result.check(
        "every active run classified",
        f"{active:,} inspected and classified",
        f"{summary['total_inspected']:,} inspected, {classified:,} classified",
        summary["total_inspected"] == classified == active,
    )
    result.check(
        "read + classify on this machine", "≤ 3 s", f"{herald.seconds:.2f} s", herald.seconds <= 3
    )
    result.check(
        "the day's run (with its events) on this machine",
        "≤ 3 s",
        f"{first.seconds:.2f} s",
        first.seconds <= 3,
    )
    pages = -(-runs // CHUNK)
    events = summary["events"]
    result.check(
        "read queries follow pages, not runs",
        f"a few per page of {CHUNK} ({pages} pages)",
        f"{herald.queries:,} ({herald.queries / pages:.1f} per page)",
        herald.queries <= 5 * pages,
    )
    writes = first.queries - herald.queries
    result.notes.append(
        f"overdue: {summary['counts']} ({sum(summary['counts'].values()):,} of {runs:,}); "
        f"{events:,} reminder events emitted with {writes:,} more queries than the read "
        f"({writes / max(events, 1):.2f} per event: record_events writes about {CHUNK} "
        "reminders at a time, the events, their handling rows and the escalation states in "
        "bulk, with one hint to the workers per batch)"
    )
    return result


def _build(runs: int):
    from production_runs.discoverer import REMINDER_TZ
    from production_runs.models import Design, Partner, ProductionRun, ProgressUpdate

    now = _noon_in_india()
    partners = Partner.objects.bulk_create(
        [Partner(name=f"Partner {p}", whatsapp_number=f"+9198765{p:05d}") for p in range(1000)]
    )
    design = Design.objects.create(name="Design")
    hour = timedelta(hours=1)

    def rows():
        for i in range(runs):
            partner = None if i % 100 == 0 else partners[i % len(partners)].id
            overdue = (i // 5) % 50 < 3  # 6 % of each kind
            if i % 5 < 2:  # sent to the partner, not accepted yet
                age = 30 * hour if overdue else 5 * hour
                yield _run(i, partner, design.id, "sent_to_partner", now - age, None, None)
            elif i % 5 == 2:  # accepted, not started
                accepted = now - (30 * hour if overdue else 3 * hour)
                yield _run(i, partner, design.id, "in_progress", now - 50 * hour, accepted, None)
            else:  # started
                started = now - (100 * hour if overdue else 10 * hour)
                yield _run(i, partner, design.id, "in_progress", now - 200 * hour, started, started)

    fast_insert(ProductionRun, rows())
    in_progress = list(
        ProductionRun.objects.filter(started_at__isnull=False)
        .order_by("id")
        .values_list("id", "started_at")
    )
    updates = []
    for index, (run_id, started) in enumerate(in_progress):
        if index % 2:  # half of the runs in progress report progress
            for k in range(1, 3):
                updates.append({"run_id": run_id, "produced_quantity": 10 * k,
                                "at": min(now, started + k * 5 * hour)})  # fmt: skip
    fast_insert(ProgressUpdate, updates)
    del REMINDER_TZ
    return now


def _run(i, partner, design, status, created, accepted, started) -> dict:
    return {
        "reference": f"RUN-{i:06d}",
        "partner_id": partner,
        "design_id": design,
        "status": status,
        "quantity": 100,
        "produced_quantity": 0,
        "created_at": created,
        "accepted_at": accepted,
        "started_at": started,
        "updated_at": created,
    }


def _noon_in_india():
    from datetime import datetime

    from production_runs.discoverer import REMINDER_TZ

    return datetime(2026, 11, 23, 10, 0, tzinfo=REMINDER_TZ)
