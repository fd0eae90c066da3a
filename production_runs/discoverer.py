"""The daily reminder discoverer (seed 002): read every active run, classify the stalled ones
into three buckets, and emit one ledger event per run (or per partner and bucket when the
digest is on). It sends nothing itself: the wildcard dispatcher does (dispatcher.py).

    read     every run with status sent_to_partner or in_progress, in keyset pages (no cap)
    classify drop runs without a partner; assignment_pending / not_started / idle by the
             thresholds in ReminderSettings; idle is measured from the latest progress update
    escalate remind on day 1, 3, 7 of a stall, then weekly (ReminderState per run); flag for
             ops a run still stalled on day 7 of its reminders (seed 002: ">= 7 consecutive
             days"); forget a run's stall only once the run has really moved on
    reach    a run whose partner has no WhatsApp number is not reminded (no event, no
             escalation step; still flagged for ops on its day when reminded before) and
             its partner is listed, with where to add the number
    emit     record_event("production_run.reminder_<kind>", ...) once per run and day
    log      one summary line with every count
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from django.db import connections, transaction
from django.db.models import (
    Case,
    CharField,
    DateTimeField,
    F,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.db.models.lookups import LessThan
from django.urls import reverse

from notifications.events import NewEvent, record_event, record_events
from production_runs.models import (
    ACTIVE_STATUSES,
    Partner,
    ProductionRun,
    ProgressUpdate,
    ReminderKind,
    ReminderSettings,
    ReminderState,
    RunStatus,
)

logger = logging.getLogger(__name__)

# The schedule's zone (10:00 Asia/Kolkata): reminder days and dedup dates are counted here.
REMINDER_TZ = ZoneInfo("Asia/Kolkata")
KINDS = tuple(ReminderKind.values)
SAMPLE_SIZE = 20
MAX_ERRORS = 20
# Partners listed in the summary for having no WhatsApp number (the count has them all).
MAX_UNREACHABLE = 50


def local_date(moment: datetime) -> date:
    return moment.astimezone(REMINDER_TZ).date()


def reminder_event_name(kind: str) -> str:
    return f"production_run.reminder_{kind}"


def digest_event_name(kind: str) -> str:
    return f"production_run.digest_{kind}"


def reminder_key(run_id: int, day: date) -> str:
    """The per-day context id of seed 002: <run>:reminder:<YYYY-MM-DD>."""
    return f"production_run:{run_id}:reminder:{day.isoformat()}"


def digest_key(partner_id: int, kind: str, day: date) -> str:
    return f"production_run_digest:{partner_id}:{kind}:{day.isoformat()}"


@dataclass(frozen=True)
class Thresholds:
    assignment_pending: timedelta
    not_started: timedelta
    idle: timedelta

    @classmethod
    def of(cls, settings: ReminderSettings) -> Thresholds:
        return cls(
            timedelta(hours=settings.assignment_pending_hours),
            timedelta(hours=settings.not_started_hours),
            timedelta(hours=settings.idle_hours),
        )

    def __getitem__(self, kind: str) -> timedelta:
        return getattr(self, kind)

    def cutoffs(self, now: datetime) -> dict[str, datetime]:
        """{kind: the moment a stall of that kind must have begun before to be overdue}."""
        return {kind: now - self[kind] for kind in KINDS}


def stall(run) -> tuple[str, datetime] | None:
    """The bucket a run would be in once overdue, and the time its stall is measured from.

    `run` needs status, created_at, accepted_at, started_at and last_progress_at.
    `with_classification` is the same in SQL (the discoverer's read): keep them in step."""
    if run.accepted_at is None and run.started_at is None:
        if run.status == RunStatus.SENT_TO_PARTNER:
            return ReminderKind.ASSIGNMENT_PENDING, run.created_at
        return None
    if run.started_at is None:
        return ReminderKind.NOT_STARTED, run.accepted_at
    if run.status == RunStatus.IN_PROGRESS:
        # Seed 002's known gap closed: the latest progress update, else the start.
        return ReminderKind.IDLE, run.last_progress_at or run.started_at
    return None


def classify(run, *, now: datetime, thresholds: Thresholds) -> tuple[str, datetime] | None:
    """(kind, stalled since) for an overdue run, None for one that is not overdue."""
    found = stall(run)
    if found is None:
        return None
    kind, since = found
    return (kind, since) if since < now - thresholds[kind] else None


def with_last_progress(queryset: QuerySet) -> QuerySet:
    latest = ProgressUpdate.objects.filter(run=OuterRef("pk")).order_by("-at", "-id")
    return queryset.annotate(last_progress_at=Subquery(latest.values("at")[:1]))


def with_classification(queryset: QuerySet, cutoffs: dict[str, datetime]) -> QuerySet:
    """`classify` in SQL: `overdue_kind` and `overdue_since`, both NULL where `classify`
    gives None (`cutoffs` as `Thresholds.cutoffs` gives them).

    The three conditions are `stall`'s branches, made disjoint: no acceptance and no start
    (sent to the partner only), accepted but not started, started and in progress. The
    discoverer reads these rather than the four datetimes `stall` needs, and a run that is
    not overdue brings none: their conversion cost more than the rest of the read."""
    not_accepted, not_started = Q(accepted_at__isnull=True), Q(started_at__isnull=True)
    branches = (
        (
            ReminderKind.ASSIGNMENT_PENDING,
            not_accepted & not_started & Q(status=RunStatus.SENT_TO_PARTNER),
            F("created_at"),
        ),
        (ReminderKind.NOT_STARTED, ~not_accepted & not_started, F("accepted_at")),
        (
            ReminderKind.IDLE,
            ~not_started & Q(status=RunStatus.IN_PROGRESS),
            # The latest progress update, else the start.
            Coalesce("last_progress_at", "started_at"),
        ),
    )
    overdue = [
        (kind, when & LessThan(since, cutoffs[kind]), since) for kind, when, since in branches
    ]
    return with_last_progress(queryset).annotate(
        overdue_kind=Case(
            *(When(when, then=Value(kind)) for kind, when, _ in overdue),
            output_field=CharField(),
        ),
        overdue_since=Case(
            *(When(when, then=since) for _, when, since in overdue),
            output_field=DateTimeField(),
        ),
    )


def bucket_filter(kind: str, *, now: datetime, thresholds: Thresholds) -> Q:
    """The same buckets as `classify`, as a filter over `with_last_progress(...)` (admin)."""
    cut = now - thresholds[kind]
    if kind == ReminderKind.ASSIGNMENT_PENDING:
        return Q(
            status=RunStatus.SENT_TO_PARTNER,
            accepted_at__isnull=True,
            started_at__isnull=True,
            created_at__lt=cut,
        )
    if kind == ReminderKind.NOT_STARTED:
        return Q(
            status__in=ACTIVE_STATUSES,
            accepted_at__isnull=False,
            started_at__isnull=True,
            accepted_at__lt=cut,
        )
    return Q(status=RunStatus.IN_PROGRESS, started_at__isnull=False, idle_since__lt=cut)


def with_idle_since(queryset: QuerySet) -> QuerySet:
    return with_last_progress(queryset).annotate(
        idle_since=Coalesce("last_progress_at", "started_at")
    )


# --- escalation ---------------------------------------------------------------------------


def step_day(number: int, *, steps: list[int], repeat_days: int) -> int:
    """The stall day on which reminder `number` (1-based) is due: the steps, then every
    `repeat_days` after the last step (1,3,7 then 14, 21, ...)."""
    if number <= len(steps):
        return steps[number - 1]
    return steps[-1] + repeat_days * (number - len(steps))


def stall_day(first_overdue_at: datetime, now: datetime) -> int:
    """Day 1 is the day the run was first found overdue (in the schedule's zone)."""
    return (local_date(now) - local_date(first_overdue_at)).days + 1


def is_same_stall(state: ReminderState | None, kind: str, since: datetime) -> bool:
    return state is not None and state.kind == kind and state.stalled_since == since


def reminded_today(
    state: ReminderState | None, *, kind: str, since: datetime, now: datetime
) -> bool:
    """Whether this stall was reminded on `now`'s day (in the schedule's zone): today's
    event for the run is out, and a run is reminded at most once a day."""
    return (
        is_same_stall(state, kind, since)
        and state.reminder_count > 0
        and state.last_reminded_at is not None
        and local_date(state.last_reminded_at) == local_date(now)
    )


def reminder_due(
    state: ReminderState | None,
    *,
    kind: str,
    since: datetime,
    now: datetime,
    steps: list[int],
    repeat_days: int,
) -> bool:
    """A new stall is reminded at once; a known one when its next step day has come (a step
    that fell on a day without a run is caught up on the next run, never skipped). A run
    as of a time before its last reminder (`--at` in the past) is not reminded again."""
    if not is_same_stall(state, kind, since) or state.reminder_count == 0:
        return True
    if state.last_reminded_at and (
        state.last_reminded_at > now or local_date(state.last_reminded_at) == local_date(now)
    ):
        return False
    due_day = step_day(state.reminder_count + 1, steps=steps, repeat_days=repeat_days)
    return stall_day(state.first_overdue_at, now) >= due_day


def flag_days(settings: ReminderSettings) -> int:
    """The stall day on which a run is flagged for ops. Seed 002: "If the same partner hits
    the reminder for the same run for >= 7 consecutive days, ops should escalate manually".
    The seed reminded every weekday, so that is a run still stalled on day 7 of being
    reminded: day 1 is its first reminder (`first_overdue_at`), not the moment it stalled
    (a stall only reaches the partner once it is overdue). With the default escalation
    (days 1, 3, 7) that is the day of the third reminder, not of the seventh (day 35)."""
    return settings.flag_after_days


def flag_due(state: ReminderState, *, now: datetime, days: int) -> bool:
    """Whether a run's stall is to be flagged for ops now (once: never when flagged)."""
    return state.flagged_at is None and stall_day(state.first_overdue_at, now) >= days


def moved_on_states(states: list[ReminderState]) -> list[int]:
    """The ids of those escalation states whose run has really moved on: it is no longer
    active, or its stall now is another (accepted, started, progress recorded since: another
    bucket or a later anchor). A run that is merely not overdue as of the time asked about
    (`--at` before the stall was found, or a threshold raised since) keeps its state: erasing
    it would start the stall again from day 1 and break the escalation schedule."""
    if not states:
        return []
    runs = with_last_progress(
        ProductionRun.objects.filter(pk__in=[state.run_id for state in states]).only(
            "status", "created_at", "accepted_at", "started_at"
        )
    )
    current = {run.id: stall(run) if run.status in ACTIVE_STATUSES else None for run in runs}
    return [
        state.pk
        for state in states
        if current.get(state.run_id) != (state.kind, state.stalled_since)
    ]


def _advance(
    state: ReminderState | None,
    *,
    run_id: int,
    kind: str,
    since: datetime,
    now: datetime,
    flag_after_days: int,
) -> tuple[ReminderState, bool, int | None]:
    """Count one reminder on the run's stall, in memory and on a copy (the caller's state is
    left as read, should the write fail); returns (state, newly flagged, the id of a state
    row of an earlier stall that must go)."""
    stale = None
    if is_same_stall(state, kind, since):
        state = copy.copy(state)
    else:
        stale = state.pk if state is not None else None
        state = ReminderState(run_id=run_id, kind=kind, stalled_since=since, first_overdue_at=now)
    state.reminder_count += 1
    state.last_reminded_at = now
    newly_flagged = flag_due(state, now=now, days=flag_after_days)
    if newly_flagged:
        state.flagged_at = now
    return state, newly_flagged, stale


def _advance_due(
    due: Due, *, now: datetime, settings: ReminderSettings
) -> tuple[ReminderState, bool, int | None]:
    """`_advance` for a run found due a reminder now."""
    return _advance(
        due.state,
        run_id=due.run.id,
        kind=due.kind,
        since=due.since,
        now=now,
        flag_after_days=flag_days(settings),
    )


def _would_flag(due: Due, *, now: datetime, settings: ReminderSettings) -> int:
    """1 if reminding the run now would flag its stall for ops (a dry run's count)."""
    _, newly_flagged, _ = _advance_due(due, now=now, settings=settings)
    return int(newly_flagged)


def _remember(state: ReminderState | None, **advance) -> tuple[ReminderState, bool]:
    """Count one reminder on the run's stall and save it; returns (state, newly flagged)."""
    state, newly_flagged, stale = _advance(state, **advance)
    if stale is not None:
        ReminderState.objects.filter(pk=stale).delete()
    state.save()
    return state, newly_flagged


def take_back_reminders(run_ids: list[int], *, at: datetime) -> int:
    """The reminder emitted at `at` for these runs was not sent (its partner had no
    WhatsApp number when the dispatcher handled it): the escalation step the discoverer
    counted for it is taken back, so the run is not counted as reminded and is reminded
    again on the next day's run. Once only: a retried handling finds no step at `at`."""
    return ReminderState.objects.filter(
        run_id__in=run_ids, last_reminded_at=at, reminder_count__gt=0
    ).update(reminder_count=F("reminder_count") - 1, last_reminded_at=None)


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunRow:
    """What the discoverer reads of a run: its classification (`with_classification`) and
    the ids its events carry (a model instance per run cost more than the classification
    itself, and the four datetimes `classify` needs cost more than the rest of the row)."""

    id: int
    partner_id: int | None
    design_id: int | None
    overdue_kind: str | None
    overdue_since: datetime | None

    @property
    def overdue(self) -> tuple[str, datetime] | None:
        """What `classify` gives for this run."""
        return None if self.overdue_kind is None else (self.overdue_kind, self.overdue_since)


READ_FIELDS = tuple(RunRow.__dataclass_fields__)


def active_runs(*, cutoffs: dict[str, datetime], chunk_size: int) -> Iterator[list[RunRow]]:
    """Every active run, classified against `cutoffs`, in pages of `chunk_size` ordered by
    id (keyset: no OFFSET, no cap, and a run inserted during the read is either seen once
    or not at all).

    The page's SQL is compiled once and run again with each page's bound: compiling the
    classification for each of 200 pages was a third of the read. Each page is fetched whole
    before it is handed out, so no read is pending while the caller writes (SQLite)."""
    queryset = (
        with_classification(ProductionRun.objects.filter(status__in=ACTIVE_STATUSES), cutoffs)
        .order_by("id")
        .values_list(*READ_FIELDS)
        # The keyset bound comes last: its parameter is the last of the statement's.
        .filter(id__gt=0)[:chunk_size]
    )
    compiler = queryset.query.get_compiler(using=queryset.db)
    sql, params = compiler.as_sql()
    *fixed, last_id = params
    if last_id != 0:
        raise RuntimeError(f"the keyset bound is not the page query's last parameter: {sql}")
    connection = connections[queryset.db]
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, (*fixed, last_id))
            rows = cursor.fetchall()
        if not rows:
            return
        page = [RunRow(*row) for row in compiler.results_iter(results=[rows])]
        yield page
        last_id = page[-1].id


# --- the discoverer -----------------------------------------------------------------------


@dataclass
class Due:
    run: RunRow
    kind: str
    since: datetime
    state: ReminderState | None


def _empty_summary(*, now: datetime, dry_run: bool, digest: bool) -> dict:
    return {
        "at": now.isoformat(),
        "date": local_date(now).isoformat(),
        "dry_run": dry_run,
        "digest": digest,
        "total_inspected": 0,
        "counts": dict.fromkeys(KINDS, 0),
        "skipped_no_partner": 0,
        "skipped_not_overdue": 0,
        "skipped_not_due": 0,
        "skipped_no_whatsapp_number": 0,
        "already_emitted": 0,
        "dispatched": 0,
        "events": 0,
        "failed": 0,
        "flagged": 0,
        "errors": [],
        "sample": [],
        # {"partner", "partner_name", "runs", "add_number_at"} per partner whose due runs
        # could not be reminded for want of a WhatsApp number.
        "no_whatsapp_number": [],
    }


def partner_change_url(partner_id: int) -> str:
    """Where staff add a partner's WhatsApp number (Admin → Production runs → Partners)."""
    return reverse("admin:production_runs_partner_change", args=[partner_id])


def _unreachable(summary: dict, run: RunRow, names: dict[int, str]) -> None:
    """Count a due run whose partner has no WhatsApp number: no event, no escalation step
    (it was not reminded; once the number is added the next run reminds it at once)."""
    summary["skipped_no_whatsapp_number"] += 1
    listed = summary["no_whatsapp_number"]
    entry = next((e for e in listed if e["partner"] == run.partner_id), None)
    if entry is None:
        if len(listed) >= MAX_UNREACHABLE:
            return
        entry = {
            "partner": run.partner_id,
            "partner_name": names[run.partner_id],
            "runs": [],
            "add_number_at": partner_change_url(run.partner_id),
        }
        listed.append(entry)
    entry["runs"].append(run.id)


def discover_reminders(
    *,
    now: datetime,
    dry_run: bool = False,
    chunk_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Find the stalled runs and emit their reminder events; returns the summary.

    `total_inspected` = sum of `counts` + `skipped_no_partner` + `skipped_not_overdue`, and
    each counted run is dispatched, failed, `skipped_not_due` (waiting for its next
    escalation day), `already_emitted` (reminded today already: today's event exists) or
    `skipped_no_whatsapp_number` (due, but its partner has no WhatsApp number: no event, not
    counted as reminded, its partner listed in `no_whatsapp_number`).
    `dry_run` classifies and reports, emits nothing and changes nothing; its
    `already_emitted` counts the runs reminded today and its `flagged` the stalls it would
    flag for ops, as a real run's would."""
    settings = ReminderSettings.load()
    cutoffs = Thresholds.of(settings).cutoffs(now)
    steps, repeat = settings.steps, settings.escalation_repeat_days
    summary = _empty_summary(now=now, dry_run=dry_run, digest=settings.digest_enabled)
    digest_groups: dict[tuple[int, str], list[Due]] = defaultdict(list)
    day = local_date(now)
    # Reminders are written in batches of about `chunk_size`, gathered over as many pages as
    # it takes: a page holds a few dozen stalled runs, and each batch costs a transaction
    # and a hint to the workers whatever its size.
    emit: list[Due] = []

    for page in active_runs(cutoffs=cutoffs, chunk_size=chunk_size):
        # The page's ids are one ascending range: a range read, not a list of 500 ids.
        states = {
            s.run_id: s
            for s in ReminderState.objects.filter(run_id__gte=page[0].id, run_id__lte=page[-1].id)
        }
        # The page's partners that cannot be reached on WhatsApp (a handful at most).
        no_number = dict(
            Partner.objects.filter(
                id__in={run.partner_id for run in page if run.overdue_kind is not None},
                whatsapp_number="",
            ).values_list("id", "name")
        )
        # Known stalls of runs not overdue as of `now` (each is forgotten only if its run
        # really moved on), and known stalls not due a reminder but due the ops flag.
        not_overdue: list[ReminderState] = []
        to_flag: list[int] = []
        for run in page:
            summary["total_inspected"] += 1
            if run.partner_id is None:
                summary["skipped_no_partner"] += 1
                continue
            state = states.get(run.id)
            found = run.overdue
            if found is None:
                summary["skipped_not_overdue"] += 1
                if state is not None and not dry_run:
                    not_overdue.append(state)
                continue
            kind, since = found
            summary["counts"][kind] += 1
            if len(summary["sample"]) < SAMPLE_SIZE:
                summary["sample"].append(
                    {"run": run.id, "kind": kind, "stalled_since": since.isoformat()}
                )
            today = reminded_today(state, kind=kind, since=since, now=now)
            if today or not reminder_due(
                state, kind=kind, since=since, now=now, steps=steps, repeat_days=repeat
            ):
                # Reminded today (a second run the same day): today's event is out. Else it
                # waits for its next escalation day.
                summary["already_emitted" if today else "skipped_not_due"] += 1
                if flag_due(state, now=now, days=flag_days(settings)):
                    if dry_run:
                        summary["flagged"] += 1  # would be
                    else:
                        to_flag.append(state.pk)
                continue
            if run.partner_id in no_number:
                _unreachable(summary, run, no_number)
                # Not reminded, but still stalled: a stall reminded before the number was
                # removed is flagged for ops on its day, as any other.
                if is_same_stall(state, kind, since) and flag_due(
                    state, now=now, days=flag_days(settings)
                ):
                    if dry_run:
                        summary["flagged"] += 1  # would be
                    else:
                        to_flag.append(state.pk)
                continue
            due = Due(run, kind, since, state)
            if settings.digest_enabled:
                digest_groups[(run.partner_id, kind)].append(due)
            elif dry_run:
                summary["dispatched"] += 1
                summary["events"] += 1
                summary["flagged"] += _would_flag(due, now=now, settings=settings)
            else:
                emit.append(due)
        if gone := moved_on_states(not_overdue):
            # The stall is over: a later one starts from day 1.
            ReminderState.objects.filter(pk__in=gone).delete()
        if to_flag:
            # Conditional: flagged once, whoever gets there first.
            summary["flagged"] += ReminderState.objects.filter(
                pk__in=to_flag, flagged_at__isnull=True
            ).update(flagged_at=now)
        if len(emit) >= chunk_size:
            _emit_batch(emit, now=now, day=day, settings=settings, summary=summary)
            emit = []
        if progress is not None:
            progress(summary["total_inspected"])
    if emit:
        _emit_batch(emit, now=now, day=day, settings=settings, summary=summary)

    for (partner_id, kind), group in sorted(digest_groups.items()):
        if dry_run:
            summary["dispatched"] += len(group)
            summary["events"] += 1
            summary["flagged"] += sum(_would_flag(d, now=now, settings=settings) for d in group)
        else:
            _emit_digest(
                partner_id, kind, group, now=now, day=day, settings=settings, summary=summary
            )

    logger.info(
        "Reminder run — inspected=%(total_inspected)s pending=%(pending)s "
        "not_started=%(not_started)s idle=%(idle)s no_partner=%(skipped_no_partner)s "
        "not_overdue=%(skipped_not_overdue)s not_due=%(skipped_not_due)s "
        "no_whatsapp_number=%(skipped_no_whatsapp_number)s already=%(already_emitted)s "
        "dispatched=%(dispatched)s failed=%(failed)s "
        "flagged=%(flagged)s dry_run=%(dry_run)s",
        {
            **summary,
            "pending": summary["counts"]["assignment_pending"],
            "not_started": summary["counts"]["not_started"],
            "idle": summary["counts"]["idle"],
        },
    )
    return summary


def _failed(summary: dict, what: str, error: Exception) -> None:
    logger.exception("reminder discoverer: %s failed", what)
    summary["failed"] += 1
    if len(summary["errors"]) < MAX_ERRORS:
        summary["errors"].append(f"{what}: {type(error).__name__}: {error}")


def _reminder(due: Due, day: date) -> NewEvent:
    run = due.run
    return NewEvent(
        reminder_event_name(due.kind),
        {
            "production_run_id": run.id,
            "partner_id": run.partner_id,
            "design_id": run.design_id,
            "reminder_kind": due.kind,
        },
        reminder_key(run.id, day),
    )


def _emit_batch(emit: list[Due], *, now, day, settings, summary) -> None:
    """A batch's events and escalation states in one transaction and a handful of
    statements. Should the lot fail (a run's event recorded meanwhile by another run of the
    discoverer, a bad row), the batch goes again one run at a time, each in its own
    savepoint, so that one failure stays one run's."""
    try:
        with transaction.atomic():
            counts = _emit_bulk(emit, now=now, day=day, settings=settings)
    except Exception as error:
        logger.info("reminder batch of %d runs goes one by one (%s)", len(emit), error)
        with transaction.atomic():
            for due in emit:
                _emit_one(due, now=now, day=day, settings=settings, summary=summary)
        return
    for name, count in counts.items():
        summary[name] += count


def _emit_bulk(emit: list[Due], *, now, day, settings) -> dict[str, int]:
    recorded = record_events([_reminder(due, day) for due in emit], now=now)
    counts = {"already_emitted": 0, "dispatched": 0, "events": 0, "flagged": 0}
    stale, fresh, known = [], [], []
    for due in emit:
        if reminder_key(due.run.id, day) not in recorded:
            counts["already_emitted"] += 1
            continue
        state, flagged, gone = _advance_due(due, now=now, settings=settings)
        if gone is not None:
            stale.append(gone)
        (known if state.pk else fresh).append(state)
        counts["dispatched"] += 1
        counts["events"] += 1
        counts["flagged"] += int(flagged)
    if stale:
        ReminderState.objects.filter(pk__in=stale).delete()
    ReminderState.objects.bulk_create(fresh, batch_size=500)
    ReminderState.objects.bulk_update(
        known, ["reminder_count", "last_reminded_at", "flagged_at"], batch_size=500
    )
    return counts


def _emit_one(due: Due, *, now, day, settings, summary) -> None:
    """One run's event and its escalation state, together or not at all; a failure is
    counted and the discoverer goes on with the next run."""
    run = due.run
    try:
        with transaction.atomic():
            event = _reminder(due, day)
            _, created = record_event(
                event.name, event.payload, idempotency_key=event.idempotency_key, now=now
            )
            if not created:
                summary["already_emitted"] += 1
                return
            _, flagged = _remember(
                due.state,
                run_id=run.id,
                kind=due.kind,
                since=due.since,
                now=now,
                flag_after_days=flag_days(settings),
            )
    except Exception as error:
        _failed(summary, f"run {run.id}", error)
        return
    summary["dispatched"] += 1
    summary["events"] += 1
    summary["flagged"] += int(flagged)


def _emit_digest(partner_id, kind, group: list[Due], *, now, day, settings, summary) -> None:
    try:
        with transaction.atomic():
            _, created = record_event(
                digest_event_name(kind),
                {
                    "partner_id": partner_id,
                    "reminder_kind": kind,
                    "production_run_ids": [due.run.id for due in group],
                    "design_ids": [due.run.design_id for due in group],
                },
                idempotency_key=digest_key(partner_id, kind, day),
                now=now,
            )
            if not created:
                # Today's digest for this partner and bucket is out; these runs wait for
                # tomorrow's (their state is left as it was, so they stay due).
                summary["already_emitted"] += len(group)
                return
            flagged = 0
            for due in group:
                _, newly = _remember(
                    due.state,
                    run_id=due.run.id,
                    kind=kind,
                    since=due.since,
                    now=now,
                    flag_after_days=flag_days(settings),
                )
                flagged += int(newly)
    except Exception as error:
        summary["failed"] += len(group) - 1
        _failed(summary, f"digest for partner {partner_id} ({kind})", error)
        return
    summary["dispatched"] += len(group)
    summary["events"] += 1
    summary["flagged"] += flagged
