"""Properties of the cadence policy over random histories, rules, times and time zones,
checked against an independent counter (ISO weeks, calendar months)."""

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cadence.policy import MESSAGE_TYPES, Rules, Sent, decide
from tests.cadence.factories import ZONES

BASE = datetime(2026, 3, 1, tzinfo=UTC)  # spans DST changes in both hemispheres
SPAN_MINUTES = 70 * 24 * 60

moments = st.integers(min_value=0, max_value=SPAN_MINUTES).map(
    lambda m: BASE + timedelta(minutes=m)
)
kinds = st.sampled_from(MESSAGE_TYPES)
caps = st.integers(min_value=0, max_value=4)
rules_strategy = st.builds(
    Rules,
    cooldown_hours=st.sampled_from([0, 0.5, 1, 2, 4, 25]),
    max_per_day=caps,
    max_per_week=st.integers(min_value=0, max_value=8),
    max_per_month=st.integers(min_value=0, max_value=12),
    type_limits=st.fixed_dictionaries({t: caps for t in MESSAGE_TYPES}),
)
histories = st.lists(st.builds(Sent, moments, kinds), max_size=25)
zones = st.sampled_from(ZONES).map(ZoneInfo)

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def breaks(rules: Rules, history: list[Sent], candidate: Sent, tz: ZoneInfo) -> list[str]:
    """The rules one more message `candidate` would break, counted independently of the
    policy's own code."""
    broken = []
    if rules.cooldown_hours and any(
        abs(s.at - candidate.at) < timedelta(hours=rules.cooldown_hours) for s in history
    ):
        broken.append("cooldown")
    local = candidate.at.astimezone(tz).date()
    dates = [(s.at.astimezone(tz).date(), s.message_type) for s in history]
    type_limit = rules.type_limits.get(candidate.message_type, 0)
    if (
        type_limit
        and sum(1 for d, t in dates if d == local and t == candidate.message_type) >= type_limit
    ):
        broken.append("type_daily")
    if rules.max_per_day and sum(1 for d, _ in dates if d == local) >= rules.max_per_day:
        broken.append("daily")
    week = local.isocalendar()[:2]
    if (
        rules.max_per_week
        and sum(1 for d, _ in dates if d.isocalendar()[:2] == week) >= rules.max_per_week
    ):
        broken.append("weekly")
    month = (local.year, local.month)
    if (
        rules.max_per_month
        and sum(1 for d, _ in dates if (d.year, d.month) == month) >= rules.max_per_month
    ):
        broken.append("monthly")
    return broken


@PROPERTY_SETTINGS
@given(rules=rules_strategy, history=histories, now=moments, kind=kinds, tz=zones)
def test_an_allowed_send_breaks_no_rule(rules, history, now, kind, tz):
    decision = decide(rules, history, kind, now, tz)
    assert decision.allowed == (breaks(rules, history, Sent(now, kind), tz) == [])
    if not decision.allowed:
        assert decision.blocking_rule == breaks(rules, history, Sent(now, kind), tz)[0]


@PROPERTY_SETTINGS
@given(rules=rules_strategy, history=histories, now=moments, kind=kinds, tz=zones)
def test_not_before_is_itself_allowed_and_breaks_no_rule(rules, history, now, kind, tz):
    decision = decide(rules, history, kind, now, tz)
    assert decision.not_before >= now
    assert decide(rules, history, kind, decision.not_before, tz).allowed
    assert breaks(rules, history, Sent(decision.not_before, kind), tz) == []


@PROPERTY_SETTINGS
@given(
    rules=rules_strategy,
    history=histories,
    now=moments,
    kind=kinds,
    tz=zones,
    fraction=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_nothing_earlier_than_not_before_is_allowed(rules, history, now, kind, tz, fraction):
    decision = decide(rules, history, kind, now, tz)
    earlier = now + (decision.not_before - now) * fraction
    if earlier < decision.not_before:
        assert breaks(rules, history, Sent(earlier, kind), tz) != []


@PROPERTY_SETTINGS
@given(
    rules=rules_strategy,
    attempts=st.lists(st.tuples(moments, kinds), max_size=30),
    tz=zones,
)
def test_queueing_every_attempt_at_its_not_before_never_exceeds_a_cap(rules, attempts, tz):
    """What the evaluator does: each new message goes at its not_before, and the time line
    it builds breaks no rule anywhere, in any period."""
    timeline: list[Sent] = []
    for now, kind in sorted(attempts):
        decision = decide(rules, timeline, kind, now, tz)
        timeline.append(Sent(decision.not_before, kind))
    for index, message in enumerate(timeline):
        others = timeline[:index] + timeline[index + 1 :]
        assert breaks(rules, others, message, tz) == [], message
    # The same, counted period by period.
    local = [(s.at.astimezone(tz).date(), s.message_type) for s in timeline]
    if rules.max_per_day:
        assert max(Counter(d for d, _ in local).values(), default=0) <= rules.max_per_day
    if rules.max_per_week:
        weeks = Counter(d.isocalendar()[:2] for d, _ in local)
        assert max(weeks.values(), default=0) <= rules.max_per_week
    if rules.max_per_month:
        months = Counter((d.year, d.month) for d, _ in local)
        assert max(months.values(), default=0) <= rules.max_per_month
