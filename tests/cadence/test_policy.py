"""Layer 2 as a pure function: every rule, its not_before, calendar periods in the person's
time zone, and the seed's priority order."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from cadence.policy import DEFAULT_RULES, Rules, Sent, decide, replay

UTC_ZONE = ZoneInfo("UTC")
MONDAY = datetime(2026, 11, 23, tzinfo=UTC)  # a Monday


def at(day_offset: int = 0, hour: int = 10, minute: int = 0) -> datetime:
    return MONDAY + timedelta(days=day_offset, hours=hour, minutes=minute)


def rules(**fields) -> Rules:
    base = dict(
        cooldown_hours=0,
        max_per_day=0,
        max_per_week=0,
        max_per_month=0,
        type_limits={"report": 0, "alert": 0, "story_so_far": 0, "custom": 0},
    )
    if "type_limits" in fields:
        base["type_limits"] = {**base["type_limits"], **fields.pop("type_limits")}
    return Rules(**{**base, **fields})


def sent(*moments, kind="alert"):
    return [Sent(m, kind) for m in moments]


def test_the_seeds_defaults():
    seed = Rules(
        cooldown_hours=1,
        max_per_day=1,
        max_per_week=2,
        max_per_month=0,
        type_limits={"report": 2, "alert": 5, "story_so_far": 1, "custom": 2},
    )
    assert seed == DEFAULT_RULES


def test_a_person_never_contacted_may_be_contacted_now():
    decision = decide(DEFAULT_RULES, [], "alert", at(), UTC_ZONE)
    assert (decision.allowed, decision.blocking_rule, decision.not_before) == (True, None, at())


def test_cooldown_holds_until_cooldown_after_the_last_message():
    decision = decide(rules(cooldown_hours=2), sent(at(hour=10)), "alert", at(hour=11), UTC_ZONE)
    assert not decision.allowed
    assert decision.blocking_rule == "cooldown"
    assert decision.not_before == at(hour=12)


def test_cooldown_passes_exactly_when_it_has_elapsed():
    assert decide(
        rules(cooldown_hours=2), sent(at(hour=10)), "alert", at(hour=12), UTC_ZONE
    ).allowed


def test_cooldown_also_keeps_clear_of_a_message_already_scheduled_later():
    # 10:00 went; one is queued for 12:00: a new one cannot squeeze in at 11:30.
    history = sent(at(hour=10), at(hour=12))
    decision = decide(rules(cooldown_hours=2), history, "alert", at(hour=11, minute=30), UTC_ZONE)
    assert (decision.blocking_rule, decision.not_before) == ("cooldown", at(hour=14))


def test_a_gap_between_scheduled_messages_is_used():
    history = sent(at(hour=8), at(hour=16))
    assert decide(rules(cooldown_hours=2), history, "alert", at(hour=12), UTC_ZONE).allowed


def test_daily_limit_holds_until_the_next_local_midnight():
    r = rules(max_per_day=5)
    four = sent(*(at(hour=h) for h in (1, 2, 3, 4)))
    assert decide(r, four, "alert", at(hour=10), UTC_ZONE).allowed
    decision = decide(r, [*four, *sent(at(hour=5))], "alert", at(hour=10), UTC_ZONE)
    assert (decision.blocking_rule, decision.not_before) == ("daily", at(1, hour=0))


def test_type_daily_limit_holds_that_type_only():
    r = rules(type_limits={"alert": 3})
    history = sent(at(hour=1), at(hour=2), at(hour=3))
    decision = decide(r, history, "alert", at(hour=10), UTC_ZONE)
    assert (decision.blocking_rule, decision.not_before) == ("type_daily", at(1, hour=0))
    assert decide(r, history, "report", at(hour=10), UTC_ZONE).allowed


def test_weekly_limit_holds_until_monday_and_weeks_start_on_monday():
    r = rules(max_per_week=2)
    history = sent(at(0, hour=9), at(1, hour=9))  # Monday and Tuesday
    sunday_night = at(6, hour=23, minute=59)
    decision = decide(r, history, "alert", sunday_night, UTC_ZONE)
    assert (decision.blocking_rule, decision.not_before) == ("weekly", at(7, hour=0))
    # Last week's messages do not count on Monday.
    assert decide(r, history, "alert", at(7, hour=0), UTC_ZONE).allowed


def test_monthly_limit_holds_until_the_first_of_next_month():
    r = rules(max_per_month=3)
    history = sent(
        datetime(2026, 11, 2, tzinfo=UTC),
        datetime(2026, 11, 10, tzinfo=UTC),
        datetime(2026, 11, 20, tzinfo=UTC),
    )
    decision = decide(r, history, "alert", datetime(2026, 11, 30, 23, tzinfo=UTC), UTC_ZONE)
    assert (decision.blocking_rule, decision.not_before) == (
        "monthly",
        datetime(2026, 12, 1, tzinfo=UTC),
    )


def test_monthly_limit_rolls_over_into_january():
    r = rules(max_per_month=1)
    decision = decide(
        r,
        sent(datetime(2026, 12, 3, tzinfo=UTC)),
        "alert",
        datetime(2026, 12, 31, tzinfo=UTC),
        UTC_ZONE,
    )
    assert decision.not_before == datetime(2027, 1, 1, tzinfo=UTC)


def test_zero_means_unlimited():
    many = sent(*(at(hour=h) for h in range(10)))
    assert decide(rules(), many, "alert", at(hour=11), UTC_ZONE).allowed


def test_the_first_blocking_rule_in_priority_order_is_reported_and_not_before_passes_all():
    # Cooldown (2 h after 10:00) and the daily cap (1 today) both block at 10:30: the seed's
    # order reports the cooldown, but the message can only go tomorrow, which the daily cap
    # decides (the rule the reason names).
    r = rules(cooldown_hours=2, max_per_day=1, max_per_week=10)
    decision = decide(r, sent(at(hour=10)), "alert", at(hour=10, minute=30), UTC_ZONE)
    assert (decision.blocking_rule, decision.holding_rule) == ("cooldown", "daily")
    assert decision.not_before == at(1, hour=0)


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (dict(cooldown_hours=1, type_limits={"alert": 1}, max_per_day=1), "cooldown"),
        (dict(type_limits={"alert": 1}, max_per_day=1, max_per_week=1), "type_daily"),
        (dict(max_per_day=1, max_per_week=1, max_per_month=1), "daily"),
        (dict(max_per_week=1, max_per_month=1), "weekly"),
        (dict(max_per_month=1), "monthly"),
    ],
)
def test_priority_order_cooldown_type_daily_daily_weekly_monthly(limits, expected):
    decision = decide(rules(**limits), sent(at(hour=10)), "alert", at(hour=10, minute=5), UTC_ZONE)
    assert decision.blocking_rule == expected


def test_not_before_chains_rules_cooldown_then_the_next_day():
    # Daily 2: 10:00 went, 12:00 is queued; the cooldown after 12:00 ends at 14:00, but the
    # day is full, so the next chance is tomorrow at midnight.
    r = rules(cooldown_hours=2, max_per_day=2)
    decision = decide(r, sent(at(hour=10), at(hour=12)), "alert", at(hour=12, minute=5), UTC_ZONE)
    assert decision.not_before == at(1, hour=0)


def test_a_stakeholder_in_another_time_zone_counts_days_in_their_zone():
    kolkata = ZoneInfo("Asia/Kolkata")
    r = rules(max_per_day=1)
    morning = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # 15:30 in Kolkata on the 23rd
    evening = datetime(2026, 11, 23, 20, 0, tzinfo=UTC)  # 01:30 in Kolkata on the 24th
    # In UTC both are on the 23rd: held until UTC midnight.
    held = decide(r, sent(morning), "alert", evening, UTC_ZONE)
    assert held.not_before == datetime(2026, 11, 24, tzinfo=UTC)
    # In Kolkata it is already the next day there: allowed.
    assert decide(r, sent(morning), "alert", evening, kolkata).allowed
    # And a Kolkata day is full until Kolkata's midnight (18:30 UTC).
    held = decide(r, sent(morning), "alert", datetime(2026, 11, 23, 17, tzinfo=UTC), kolkata)
    assert held.not_before == datetime(2026, 11, 23, 18, 30, tzinfo=UTC)


def test_week_boundary_in_the_persons_zone():
    new_york = ZoneInfo("America/New_York")
    r = rules(max_per_week=1)
    # Sunday 23:00 in New York is Monday 04:00 UTC: still last week for this person.
    sunday_night_ny = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
    decision = decide(
        r, sent(datetime(2026, 11, 25, 15, tzinfo=UTC)), "alert", sunday_night_ny, new_york
    )
    assert decision.blocking_rule == "weekly"
    assert decision.not_before == datetime(2026, 11, 30, 5, 0, tzinfo=UTC)  # Monday 00:00 EST


def test_the_reason_names_the_rule_and_the_time_it_goes():
    decision = decide(
        rules(cooldown_hours=2), sent(at(hour=10)), "alert", at(hour=10, minute=5), UTC_ZONE
    )
    assert decision.reason(UTC_ZONE) == (
        "cadence: cooldown (2 h after the message at 2026-11-23 10:00 UTC) — queued until "
        "2026-11-23 12:00 UTC"
    )


# The reviewer's case: one message at 18:38, the cooldown (2 h) and the daily cap (1) both
# hold one more at 19:00; the cooldown ends at 20:38, but the day is full until midnight.
EVENING = datetime(2026, 11, 22, 18, 38, tzinfo=UTC)


def test_the_reason_names_the_daily_limit_when_it_outlasts_the_cooldown():
    r = rules(cooldown_hours=2, max_per_day=1)
    decision = decide(r, sent(EVENING), "alert", EVENING + timedelta(minutes=22), UTC_ZONE)
    # The seed's priority order still reports the cooldown as the first rule broken now...
    assert decision.blocking_rule == "cooldown"
    # ...but the time it goes is the daily limit's, and so is the reason.
    assert (decision.holding_rule, decision.label) == ("daily", "daily limit")
    assert decision.not_before == datetime(2026, 11, 23, tzinfo=UTC)
    assert decision.reason(UTC_ZONE) == (
        "cadence: daily limit (1/1 today) — queued until 2026-11-23 00:00 UTC"
    )


def test_the_reason_names_the_cooldown_when_it_outlasts_the_daily_limit():
    # Same message, a wider day cap: the daily limit passes, the cooldown decides.
    r = rules(cooldown_hours=2, max_per_day=5)
    decision = decide(r, sent(EVENING), "alert", EVENING + timedelta(minutes=22), UTC_ZONE)
    assert (decision.blocking_rule, decision.holding_rule) == ("cooldown", "cooldown")
    assert decision.reason(UTC_ZONE) == (
        "cadence: cooldown (2 h after the message at 2026-11-22 18:38 UTC) — queued until "
        "2026-11-22 20:38 UTC"
    )
    # A cooldown long enough to run past midnight outlasts the daily limit (1) too.
    r = rules(cooldown_hours=8, max_per_day=1)
    decision = decide(r, sent(EVENING), "alert", EVENING + timedelta(minutes=22), UTC_ZONE)
    assert decision.reason(UTC_ZONE) == (
        "cadence: cooldown (8 h after the message at 2026-11-22 18:38 UTC) — queued until "
        "2026-11-23 02:38 UTC"
    )


def test_the_reason_names_a_rule_met_later_with_its_own_day():
    # Daily cap 1 holds one more today; tomorrow's slot is taken by a message scheduled at
    # 00:30, whose cooldown is what the new one waits for.
    r = rules(cooldown_hours=2, max_per_day=2)
    history = sent(at(hour=9), at(hour=10), at(1, hour=0, minute=30))
    decision = decide(r, history, "alert", at(hour=15), UTC_ZONE)
    assert (decision.blocking_rule, decision.not_before) == ("daily", at(1, hour=2, minute=30))
    assert decision.reason(UTC_ZONE) == (
        "cadence: cooldown (2 h after the message at 2026-11-24 00:30 UTC) — queued until "
        "2026-11-24 02:30 UTC"
    )
    # A full day that is not today is named by its date.
    history = sent(at(hour=9), at(hour=10), at(1, hour=0, minute=30), at(1, hour=3))
    decision = decide(r, history, "alert", at(hour=15), UTC_ZONE)
    assert decision.reason(UTC_ZONE) == (
        "cadence: daily limit (2/2 on 2026-11-24) — queued until 2026-11-25 00:00 UTC"
    )


def test_the_reasons_times_carry_the_persons_zone():
    chicago = ZoneInfo("America/Chicago")
    r = rules(cooldown_hours=2)
    decision = decide(r, sent(EVENING), "alert", EVENING + timedelta(minutes=22), chicago)
    assert decision.reason(chicago) == (
        "cadence: cooldown (2 h after the message at 2026-11-22 12:38 CST) — queued until "
        "2026-11-22 14:38 CST"
    )


def test_replay_holds_what_would_have_broken_the_changed_rules():
    sends = sent(at(hour=9), at(hour=10), at(hour=15), at(1, hour=9))
    verdicts = replay(rules(max_per_day=1), UTC_ZONE, prior=[], sends=sends)
    held = [s.at for s, d in verdicts if not d.allowed]
    assert held == [at(hour=10), at(hour=15)]
    # A held message does not count against the next one (it was never sent).
    assert [d.blocking_rule for _, d in verdicts] == [None, "daily", "daily", None]


def test_the_what_if_counts_each_held_message_under_the_rule_that_decided_its_wait():
    from notifications.cadence_checks import PersonReplay

    history = [Sent(at=datetime(2026, 11, 23, 21, 0, tzinfo=UTC), message_type="alert")]
    at = datetime(2026, 11, 23, 21, 30, tzinfo=UTC)
    # Broken first: the cooldown (to 23:00); decides the wait: the daily limit (to 24:00).
    free = {"max_per_week": 0, "type_limits": {}}
    by_day = decide(Rules(cooldown_hours=2, max_per_day=1, **free), history, "alert", at, UTC)
    by_cooldown = decide(Rules(cooldown_hours=2, max_per_day=0, **free), history, "alert", at, UTC)
    assert (by_day.blocking_rule, by_cooldown.blocking_rule) == ("cooldown", "cooldown")
    replay = PersonReplay(
        stakeholder=None,
        held=[("email", history[0], by_day)] * 2 + [("email", history[0], by_cooldown)],
    )
    assert replay.rules_hit == {"daily limit": 2, "cooldown": 1}
