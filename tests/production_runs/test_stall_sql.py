"""The discoverer classifies each run in SQL (`with_classification`) rather than from the
four datetimes `stall` needs: SQL and `stall`/`classify` must give the same (kind, since)
for every run, or the buckets, their counts and the escalation states (matched on
`stalled_since`) would drift."""

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from production_runs.discoverer import (
    Thresholds,
    active_runs,
    classify,
    discover_reminders,
    stall,
    with_classification,
    with_last_progress,
)
from production_runs.models import (
    ACTIVE_STATUSES,
    ProductionRun,
    ReminderKind,
    ReminderSettings,
    RunStatus,
)
from tests.production_runs.factories import (
    DAY,
    HOUR,
    NOW,
    PartnerFactory,
    ProgressUpdateFactory,
    RunFactory,
)

pytestmark = pytest.mark.django_db

SENT, IN_PROGRESS = RunStatus.SENT_TO_PARTNER, RunStatus.IN_PROGRESS
PENDING, NOT_STARTED, IDLE = (
    ReminderKind.ASSIGNMENT_PENDING,
    ReminderKind.NOT_STARTED,
    ReminderKind.IDLE,
)
CREATED, ACCEPTED, STARTED = NOW - 5 * DAY, NOW - 4 * DAY, NOW - 3 * DAY
USEC = timedelta(microseconds=1)


def make_run(*, status, accepted=None, started=None, progress=(), partner=True):
    run = RunFactory(
        status=status,
        created_at=CREATED,
        accepted_at=accepted,
        started_at=started,
        **({} if partner else {"partner": None}),
    )
    for at in progress:
        ProgressUpdateFactory(run=run, at=at)
    return run


def by_python(run) -> tuple | None:
    return stall(with_last_progress(ProductionRun.objects.filter(pk=run.pk)).get())


def cutoffs_at(now):
    return Thresholds.of(ReminderSettings.load()).cutoffs(now)


def by_sql(run, now) -> tuple | None:
    kind, since = (
        with_classification(ProductionRun.objects.filter(pk=run.pk), cutoffs_at(now))
        .values_list("overdue_kind", "overdue_since")
        .get()
    )
    return None if kind is None else (kind, since)


def classified(run, now) -> tuple | None:
    instance = with_last_progress(ProductionRun.objects.filter(pk=run.pk)).get()
    return classify(instance, now=now, thresholds=Thresholds.of(ReminderSettings.load()))


# (status, accepted_at, started_at, progress updates, partner) → what `stall` gives
KEYS = ("status", "accepted", "started", "progress", "partner")
CASES = {
    "sent, not accepted: pending since created": (SENT, None, None, (), True, (PENDING, CREATED)),
    "no partner: still pending (dropped later)": (SENT, None, None, (), False, (PENDING, CREATED)),
    "sent, accepted: not started since accepted": (
        SENT, ACCEPTED, None, (), True, (NOT_STARTED, ACCEPTED),
    ),
    "sent, started: no stall": (SENT, ACCEPTED, STARTED, (), True, None),
    "sent, started without acceptance: no stall": (SENT, None, STARTED, (), True, None),
    "in progress, neither accepted nor started: no stall": (
        IN_PROGRESS, None, None, (), True, None,
    ),
    "in progress, accepted, not started": (
        IN_PROGRESS, ACCEPTED, None, (), True, (NOT_STARTED, ACCEPTED),
    ),
    "in progress, updates before the start do not count as not started": (
        IN_PROGRESS, ACCEPTED, None, (NOW - DAY,), True, (NOT_STARTED, ACCEPTED),
    ),
    "started, no progress: idle since the start": (
        IN_PROGRESS, ACCEPTED, STARTED, (), True, (IDLE, STARTED),
    ),
    "started, progress: idle since the latest update": (
        IN_PROGRESS, ACCEPTED, STARTED, (NOW - 2 * DAY, NOW - DAY + USEC, NOW - 2 * HOUR),
        True, (IDLE, NOW - 2 * HOUR),
    ),
    "started, an update dated before the start still wins": (
        IN_PROGRESS, ACCEPTED, STARTED, (STARTED - HOUR,), True, (IDLE, STARTED - HOUR),
    ),
    "started, two updates at the same instant": (
        IN_PROGRESS, ACCEPTED, STARTED, (NOW - HOUR, NOW - HOUR), True, (IDLE, NOW - HOUR),
    ),
    "started without acceptance: idle": (
        IN_PROGRESS, None, STARTED, (), True, (IDLE, STARTED),
    ),
    "draft: no stall": (RunStatus.DRAFT, None, None, (), True, None),
    "completed after starting: no stall": (RunStatus.COMPLETED, ACCEPTED, STARTED, (), True, None),
    "cancelled before starting: not started, as stall() has it": (
        RunStatus.CANCELLED, ACCEPTED, None, (), True, (NOT_STARTED, ACCEPTED),
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("status", "accepted", "started", "progress", "partner", "expected"),
    list(CASES.values()),
    ids=list(CASES),
)
def test_the_sql_stall_is_the_python_stall(status, accepted, started, progress, partner, expected):
    run = make_run(
        status=status, accepted=accepted, started=started, progress=progress, partner=partner
    )
    assert by_python(run) == expected
    # A year on, every stall is overdue: SQL gives each one's kind and since.
    assert by_sql(run, NOW + 365 * DAY) == expected
    if expected is not None:
        # Overdue from the first instant after its threshold, not at it.
        kind, since = expected
        due = since + Thresholds.of(ReminderSettings.load())[kind]
        for now in (due - USEC, due, due + USEC):
            assert by_sql(run, now) == classified(run, now)
        assert (by_sql(run, due), by_sql(run, due + USEC)) == (None, expected)


def test_the_discoverer_reads_every_case_as_classify_has_it():
    runs = [make_run(**dict(zip(KEYS, case[:-1], strict=True))) for case in CASES.values()]
    active = [run for run in runs if run.status in ACTIVE_STATUSES]
    for now in (NOW, NOW + 365 * DAY):
        pages = active_runs(cutoffs=cutoffs_at(now), chunk_size=4)
        read = {row.id: row.overdue for page in pages for row in page}
        assert read == {run.id: classified(run, now) for run in active}


# Moments around the thresholds (24 h and 72 h), to the microsecond on either side.
moments = st.builds(
    lambda hours, nudge: NOW - timedelta(hours=hours) + nudge * USEC,
    st.sampled_from([0, 1, 23, 24, 25, 71, 72, 73, 200]),
    st.sampled_from([-1, 0, 1]),
)
runs = st.fixed_dictionaries(
    {
        "status": st.sampled_from(RunStatus.values),
        "accepted": st.none() | moments,
        "started": st.none() | moments,
        "progress": st.lists(moments, max_size=3),
        "partner": st.booleans(),
    }
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(runs, min_size=1, max_size=6), moments)
def test_the_read_and_the_summary_are_those_of_classify(specs, created):
    ProductionRun.objects.all().delete()
    for spec in specs:
        run = RunFactory(
            status=spec["status"],
            created_at=created,
            accepted_at=spec["accepted"],
            started_at=spec["started"],
            partner=PartnerFactory() if spec["partner"] else None,
        )
        for at in spec["progress"]:
            ProgressUpdateFactory(run=run, at=at)
    active = with_last_progress(ProductionRun.objects.filter(status__in=ACTIVE_STATUSES))

    thresholds = Thresholds.of(ReminderSettings.load())
    pages = active_runs(cutoffs=thresholds.cutoffs(NOW), chunk_size=2)
    read = {row.id: row.overdue for page in pages for row in page}
    assert read == {run.id: classify(run, now=NOW, thresholds=thresholds) for run in active}

    summary = discover_reminders(now=NOW, dry_run=True, chunk_size=2)
    partnered = [run for run in active if run.partner_id is not None]
    overdue = {
        run.id: found
        for run in partnered
        if (found := classify(run, now=NOW, thresholds=thresholds)) is not None
    }
    assert summary["skipped_no_partner"] == len(active) - len(partnered)
    assert summary["skipped_not_overdue"] == len(partnered) - len(overdue)
    assert summary["counts"] == {
        kind: sum(1 for k, _ in overdue.values() if k == kind) for kind in ReminderKind.values
    }
    # The same `since` as classify: the escalation state's "same stall" compares it.
    assert {
        entry["run"]: (entry["kind"], entry["stalled_since"]) for entry in summary["sample"]
    } == {pk: (kind, since.isoformat()) for pk, (kind, since) in overdue.items()}
