"""Who may be contacted how often (seed 003, Layer 2): the decision is a pure function of the
rules, the person's messages, the message type and `now`.

The history is every message that occupies the person's time line: sent ones and ones
already scheduled for later, so a queued time is the time the message will really go and a
new message is placed between them without breaking a rule. Days, weeks (starting Monday)
and months are calendar periods in the person's time zone. A cap of 0 means unlimited, a
cooldown of 0 means none.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from cadence.validators import MAX_HOURS

# The seed's priority order: when several rules block at once, the first one here is the
# `blocking_rule`. A held message's reason names instead the rule that holds it until its
# `not_before` (`Decision.holding_rule`): the one whose release comes last.
RULE_ORDER = ("cooldown", "type_daily", "daily", "weekly", "monthly")
RULE_LABELS = {
    "cooldown": "cooldown",
    "type_daily": "type daily limit",
    "daily": "daily limit",
    "weekly": "weekly limit",
    "monthly": "monthly limit",
}
MESSAGE_TYPES = ("report", "alert", "story_so_far", "custom")
DEFAULT_TYPE_LIMITS = {"report": 2, "alert": 5, "story_so_far": 1, "custom": 2}

# Longest look-back any rule needs, plus room for a long cooldown: what callers must load.
HISTORY_WINDOW = timedelta(days=32)

_MAX_STEPS = 100_000  # every step moves forward past one message or period; never reached


@dataclass(frozen=True)
class Rules:
    """A person's cadence. The defaults are the seed's."""

    cooldown_hours: float = 1.0
    max_per_day: int = 1
    max_per_week: int = 2
    max_per_month: int = 0
    type_limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_TYPE_LIMITS))

    def __post_init__(self):
        # Forms refuse a cooldown over a year; one stored before that bound counts as a
        # year rather than overflowing the date arithmetic of every decision.
        if self.cooldown_hours > MAX_HOURS:
            object.__setattr__(self, "cooldown_hours", float(MAX_HOURS))

    def describe(self) -> str:
        def cap(n: int) -> str:
            return str(n) if n else "∞"

        types = ", ".join(f"{t} {cap(n)}" for t, n in self.type_limits.items())
        return (
            f"cooldown {self.cooldown_hours:g} h; {cap(self.max_per_day)}/day, "
            f"{cap(self.max_per_week)}/week, {cap(self.max_per_month)}/month; per type/day: "
            f"{types}"
        )


DEFAULT_RULES = Rules()


@dataclass(frozen=True)
class Sent:
    """One message on the person's time line (sent, in flight or scheduled)."""

    at: datetime
    message_type: str = "custom"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    blocking_rule: str | None  # first of RULE_ORDER broken at `now`; None when allowed
    not_before: datetime  # earliest moment every rule passes (== now when allowed)
    # Why not before `not_before`: the rule still broken just before it (the one whose
    # release comes last), e.g. "2 h after the message at 2026-11-23 10:00 UTC".
    detail: str = ""
    holding_rule: str | None = None  # one of RULE_ORDER; None when allowed

    @property
    def label(self) -> str:
        """The holding rule, as the reason and the simulator name it."""
        return RULE_LABELS.get(self.holding_rule or self.blocking_rule or "", "")

    def reason(self, tz: ZoneInfo, *, verb: str = "queued until") -> str:
        """The status reason of a held delivery, naming the rule that decides when it goes,
        e.g. 'cadence: cooldown (2 h after the message at 2026-11-23 10:00 UTC) — queued
        until 2026-11-23 12:00 UTC'."""
        if self.allowed:
            return ""
        when = self.not_before.astimezone(tz)
        return f"cadence: {self.label} ({self.detail}) — {verb} {when:%Y-%m-%d %H:%M %Z}"


@dataclass(frozen=True)
class _Entry:
    at: datetime
    message_type: str
    day: date


@dataclass(frozen=True)
class _Block:
    rule: str
    next_try: datetime
    detail: str


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def _week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def _first_block(
    rules: Rules,
    entries: Sequence[_Entry],
    message_type: str,
    at: datetime,
    tz: ZoneInfo,
    today: date,
) -> _Block | None:
    """The first rule, in priority order, that a message at `at` would break, with the
    earliest later moment at which that rule could pass. Periods are named relative to
    `today` (the local date of the moment asked about): "today", or the date."""
    cooldown = timedelta(hours=rules.cooldown_hours)
    if cooldown > timedelta(0):
        near = [e.at for e in entries if abs(e.at - at) < cooldown]
        if near:
            last = max(near)
            return _Block(
                "cooldown",
                last + cooldown,
                f"{rules.cooldown_hours:g} h after the message at "
                f"{last.astimezone(tz):%Y-%m-%d %H:%M %Z}",
            )
    day = at.astimezone(tz).date()
    tomorrow = _midnight(day + timedelta(days=1), tz)
    on_day = "today" if day == today else f"on {day:%Y-%m-%d}"
    type_limit = rules.type_limits.get(message_type, 0)
    if type_limit:
        count = sum(1 for e in entries if e.day == day and e.message_type == message_type)
        if count >= type_limit:
            return _Block("type_daily", tomorrow, f"{count}/{type_limit} {message_type} {on_day}")
    if rules.max_per_day:
        count = sum(1 for e in entries if e.day == day)
        if count >= rules.max_per_day:
            return _Block("daily", tomorrow, f"{count}/{rules.max_per_day} {on_day}")
    if rules.max_per_week:
        week = _week_start(day)
        count = sum(1 for e in entries if _week_start(e.day) == week)
        if count >= rules.max_per_week:
            next_week = _midnight(week + timedelta(days=7), tz)
            in_week = "this week" if week == _week_start(today) else f"in the week of {week}"
            return _Block("weekly", next_week, f"{count}/{rules.max_per_week} {in_week}")
    if rules.max_per_month:
        month = day.replace(day=1)
        count = sum(1 for e in entries if e.day.replace(day=1) == month)
        if count >= rules.max_per_month:
            return _Block(
                "monthly",
                _midnight(_next_month(day), tz),
                f"{count}/{rules.max_per_month} "
                + ("this month" if month == today.replace(day=1) else f"in {month:%Y-%m}"),
            )
    return None


def decide(
    rules: Rules,
    history: Iterable[Sent],
    message_type: str,
    now: datetime,
    tz: ZoneInfo,
) -> Decision:
    """May one more message of `message_type` go to this person at `now`?

    Allowed when no message of the history lies within the cooldown on either side of
    `now` and, counting the history's messages in the same local day (of this type, and of
    any type), week and month, one more stays within every cap. Otherwise `not_before` is
    the earliest later moment at which all of that holds; `blocking_rule` is the first rule
    broken at `now` in priority order, and `holding_rule` (with `detail`) the one still
    broken just before `not_before`: the rule that decides when the message may go.
    """
    entries = [_Entry(s.at, s.message_type, s.at.astimezone(tz).date()) for s in history]
    today = now.astimezone(tz).date()
    at = now
    first: _Block | None = None
    last: _Block | None = None
    for _ in range(_MAX_STEPS):
        block = _first_block(rules, entries, message_type, at, tz, today)
        if block is None:
            break
        first = first or block
        last = block
        at = block.next_try
    else:  # pragma: no cover - each step passes a message or a period of a finite history
        raise RuntimeError("cadence: no moment found at which every rule passes")
    if first is None or last is None:
        return Decision(True, None, now)
    return Decision(False, first.rule, at.astimezone(now.tzinfo), last.detail, last.rule)


@dataclass(frozen=True)
class Periods:
    """The local day, week (from Monday) and month of a moment, each as [start, end)."""

    day: tuple[datetime, datetime]
    week: tuple[datetime, datetime]
    month: tuple[datetime, datetime]


def periods(at: datetime, tz: ZoneInfo) -> Periods | None:
    """The calendar periods the caps count in, or None when a boundary is not the first
    instant of its local date (a zone whose clocks jump at midnight): counting by instants
    would then differ from counting by dates, and the caller must use `decide`."""
    day = at.astimezone(tz).date()
    week = _week_start(day)
    month = day.replace(day=1)
    local = [
        (day, day + timedelta(days=1)),
        (week, week + timedelta(days=7)),
        (month, _next_month(day)),
    ]
    for start, end in local:
        for date_ in (start, end):
            instant = _midnight(date_, tz)
            before = (instant - timedelta(microseconds=1)).astimezone(tz).date()
            if instant.astimezone(tz).date() != date_ or before >= date_:
                return None
    day_span, week_span, month_span = (
        (_midnight(start, tz), _midnight(end, tz)) for start, end in local
    )
    return Periods(day_span, week_span, month_span)


@dataclass(frozen=True)
class Counts:
    """What the rules look at around one moment of a person's time line: the messages
    within the cooldown on either side of it, and those in its local day (all, and of the
    type asked about), week and month (`periods`)."""

    near: int = 0
    day: int = 0
    type_day: int = 0
    week: int = 0
    month: int = 0


def allowed_by_counts(rules: Rules, counts: Counts, message_type: str) -> bool:
    """`decide(...).allowed` from counts alone (taken around the moment asked about, for
    `message_type`, with this person's cooldown): a database can count, so an audience is
    screened without loading its time lines; only the people held need `decide` for the
    rule and the time it passes."""
    if rules.cooldown_hours > 0 and counts.near:
        return False
    caps = (
        (rules.type_limits.get(message_type, 0), counts.type_day),
        (rules.max_per_day, counts.day),
        (rules.max_per_week, counts.week),
        (rules.max_per_month, counts.month),
    )
    return not any(cap and count >= cap for cap, count in caps)


def replay(
    rules: Rules, tz: ZoneInfo, *, prior: Iterable[Sent], sends: Iterable[Sent]
) -> list[tuple[Sent, Decision]]:
    """What `rules` would have said about each of `sends`, in time order, had they been in
    force: a held message does not count for the ones after it. `prior` is what the
    person had received before (it counts, and is not judged)."""
    kept = list(prior)
    verdicts = []
    for send in sorted(sends, key=lambda s: s.at):
        decision = decide(rules, kept, send.message_type, send.at, tz)
        if decision.allowed:
            kept.append(send)
        verdicts.append((send, decision))
    return verdicts
