"""`cadence_decisions` (an audience screened with grouped counts, `decide` only for the
people a rule holds) gives, person by person, what `decide` gives over the person's
`stakeholder_histories`: random audiences, overrides, time zones and outboxes."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cadence.models import Persona, Stakeholder
from cadence.policy import MESSAGE_TYPES, Decision, decide
from notifications import cadence_checks
from notifications.cadence_checks import cadence_decisions, stakeholder_histories
from notifications.models import Delivery
from tests.cadence.factories import ZONES, PersonaFactory, StakeholderFactory
from tests.notifications.factories import NotificationFactory

pytestmark = pytest.mark.django_db

STATUSES = [s.value for s in Delivery.Status]
BASE = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # spans DST changes in both hemispheres

# `now` on a day of its own, and every message placed around it (days, hours, minutes).
nows = st.integers(min_value=0, max_value=70 * 24).map(lambda h: BASE + timedelta(hours=h))
# Most messages close to `now` (so that the caps and the cooldown bind), some back to
# before the history window.
offsets = st.one_of(
    st.integers(min_value=-36 * 60, max_value=36 * 60),
    st.integers(min_value=-40 * 24 * 60, max_value=3 * 24 * 60),
).map(lambda m: timedelta(minutes=m))
maybe_cap = st.none() | st.integers(min_value=0, max_value=4)
overrides = st.fixed_dictionaries(
    {},
    optional={
        "cooldown_hours": st.sampled_from([0, 0.5, 1, 2, 25]),
        "max_per_day": maybe_cap,
        "max_per_week": st.none() | st.integers(min_value=0, max_value=8),
        "max_per_month": st.none() | st.integers(min_value=0, max_value=12),
        "max_alert_per_day": maybe_cap,
        "max_report_per_day": maybe_cap,
    },
)
messages = st.fixed_dictionaries(
    {
        "offset": offsets,
        "sent_late": st.none() | st.integers(min_value=0, max_value=6 * 60),  # minutes
        "status": st.sampled_from(["sent"] * len(STATUSES) + STATUSES),
        "channel": st.sampled_from(["email", "sms"]),
        "type": st.sampled_from(MESSAGE_TYPES),
        "fallback_of": st.none() | st.integers(min_value=0, max_value=20),
    }
)
people = st.lists(
    st.tuples(st.sampled_from(ZONES), overrides, st.lists(messages, max_size=12)),
    min_size=1,
    max_size=6,
)


def build(audience, now) -> list[Stakeholder]:
    persona = PersonaFactory(max_per_month=5)
    notification = NotificationFactory()
    made = []
    for zone, own, outbox in audience:
        person = StakeholderFactory(persona=persona, time_zone=zone, **own)
        mine = []
        for index, message in enumerate(outbox):
            at = now + message["offset"]
            original = message["fallback_of"]
            delivery = Delivery.objects.create(
                notification=notification,
                recipient_key=person.recipient_key,
                channel=message["channel"],
                address="someone@example.org",
                # The engine's fallback copy does not carry its original's type.
                message_type="custom" if original is not None and mine else message["type"],
                fallback_of=mine[original % len(mine)] if original is not None and mine else None,
                status=message["status"],
                idempotency_key=f"{person.pk}:{index}",
                send_at=at,
                sent_at=None if message["sent_late"] is None else at + timedelta(
                    minutes=message["sent_late"]
                ),
            )  # fmt: skip
            mine.append(delivery)
        made.append(person)
    return list(Stakeholder.objects.select_related("persona").filter(pk__in=[p.pk for p in made]))


def one_by_one(audience, *, channel, message_type, now) -> dict:
    return {
        person.pk: decide(
            person.rules(),
            stakeholder_histories([person.pk], now=now).get((person.pk, channel), []),
            message_type,
            now,
            person.tz,
        )
        for person in audience
    }


def gets_what_decide_gives(audience, now, channel, message_type) -> None:
    Delivery.objects.all().delete()
    Stakeholder.objects.all().delete()
    Persona.objects.all().delete()
    stakeholders = build(audience, now)

    got = cadence_decisions(stakeholders, channel=channel, message_type=message_type, now=now)

    assert got == one_by_one(stakeholders, channel=channel, message_type=message_type, now=now)


questions = {
    "audience": people,
    "now": nows,
    "channel": st.sampled_from(["email", "sms"]),
    "message_type": st.sampled_from(MESSAGE_TYPES),
}


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(**questions)
def test_the_audience_gets_what_decide_gives_each_person(audience, now, channel, message_type):
    gets_what_decide_gives(audience, now, channel, message_type)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(**questions)
def test_the_same_answers_when_the_counts_take_several_queries(
    monkeypatch, audience, now, channel, message_type
):
    """Two people's keys per query, and one calendar (zone) per query."""
    monkeypatch.setattr(cadence_checks, "_COUNT_CHUNK", 2)
    monkeypatch.setattr(cadence_checks, "_CALENDARS_PER_QUERY", 1)

    gets_what_decide_gives(audience, now, channel, message_type)


@pytest.mark.postgres
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(**questions)
def test_on_postgresql_the_audience_gets_what_decide_gives_each_person(
    audience, now, channel, message_type
):
    """The keys go as one string there (`_OneOf`), the audience in one query."""
    assert connection.vendor == "postgresql"

    gets_what_decide_gives(audience, now, channel, message_type)


def test_the_queries_do_not_grow_with_the_audience():
    now = BASE
    persona = PersonaFactory()
    notification = NotificationFactory()

    def queries_for(count: int) -> int:
        audience = []
        for index in range(count):
            person = StakeholderFactory(persona=persona, time_zone=ZONES[index % 4])
            # Every other person is held by the cooldown (a message half an hour ago).
            ago = timedelta(minutes=30) if index % 2 else timedelta(days=3)
            Delivery.objects.create(
                notification=notification,
                recipient_key=person.recipient_key,
                channel="email",
                address="someone@example.org",
                message_type="alert",
                status="sent",
                idempotency_key=f"{person.pk}:1",
                send_at=now - ago,
            )
            audience.append(person)
        with CaptureQueriesContext(connection) as captured:
            decisions = cadence_decisions(audience, channel="email", message_type="alert", now=now)
        assert decisions == one_by_one(audience, channel="email", message_type="alert", now=now)
        assert not all(d.allowed for d in decisions.values())
        assert any(d.allowed for d in decisions.values())
        return len(captured)

    assert queries_for(8) == queries_for(40)


# --- the cases the screening handles apart -------------------------------------------------

UNCAPPED = {
    "cooldown_hours": 0,
    "max_per_day": 0,
    "max_per_week": 0,
    "max_per_month": 0,
    "max_report_per_day": 0,
    "max_alert_per_day": 0,
    "max_story_so_far_per_day": 0,
    "max_custom_per_day": 0,
}


def screened_alone(person, *, channel, now) -> Decision:
    """The person's decision from `cadence_decisions`, checked against `decide`."""
    person = Stakeholder.objects.select_related("persona").get(pk=person.pk)
    got = cadence_decisions([person], channel=channel, message_type="alert", now=now)
    assert got == one_by_one([person], channel=channel, message_type="alert", now=now)
    return got[person.pk]


def sent(person, *, channel="email", at, kind="alert", fallback_of=None, status="sent"):
    return Delivery.objects.create(
        notification=NotificationFactory(),
        recipient_key=person.recipient_key,
        channel=channel,
        address="someone@example.org",
        message_type=kind,
        fallback_of=fallback_of,
        status=status,
        idempotency_key=f"{person.pk}:{channel}:{at.isoformat()}",
        send_at=at,
        sent_at=at,
    )


def test_a_fallback_copy_today_counts_with_its_originals_type():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    person = StakeholderFactory(persona=PersonaFactory(**{**UNCAPPED, "max_alert_per_day": 1}))
    original = sent(person, at=now - timedelta(hours=3), status="failed")
    sent(person, channel="sms", at=now - timedelta(hours=2), kind="custom", fallback_of=original)

    decision = screened_alone(person, channel="sms", now=now)

    assert (decision.allowed, decision.blocking_rule) == (False, "type_daily")


def test_a_monthly_cap_counts_the_month_before_this_week():
    now = datetime(2026, 3, 16, 12, 0, tzinfo=UTC)  # a Monday, two weeks into the month
    person = StakeholderFactory(persona=PersonaFactory(**{**UNCAPPED, "max_per_month": 2}))
    for day in (3, 5):
        sent(person, at=datetime(2026, 3, day, 9, 0, tzinfo=UTC))

    decision = screened_alone(person, channel="email", now=now)

    assert (decision.allowed, decision.blocking_rule) == (False, "monthly")
    assert decision.not_before == datetime(2026, 4, 1, tzinfo=UTC)


def test_the_same_counts_under_other_rules_are_screened_apart():
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    lenient = StakeholderFactory(persona=PersonaFactory(**{**UNCAPPED, "max_per_day": 2}))
    strict = StakeholderFactory(persona=PersonaFactory(**{**UNCAPPED, "max_per_day": 1}))
    for person in (lenient, strict):
        sent(person, at=now - timedelta(hours=2))
    audience = list(Stakeholder.objects.select_related("persona").order_by("pk"))

    got = cadence_decisions(audience, channel="email", message_type="alert", now=now)

    assert got == one_by_one(audience, channel="email", message_type="alert", now=now)
    assert (got[strict.pk].blocking_rule, got[lenient.pk].allowed) == ("daily", True)


def test_a_zone_with_irregular_midnights_is_decided_from_the_time_line(monkeypatch):
    """Where `periods` cannot give the calendar as instants (clocks that jump at
    midnight), nobody in that zone is counted: `decide` judges them all."""
    from notifications import cadence_checks

    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    regular = cadence_checks.periods
    monkeypatch.setattr(
        cadence_checks,
        "periods",
        lambda at, tz: None if str(tz) == "America/Santiago" else regular(at, tz),
    )
    quiet = StakeholderFactory(persona=PersonaFactory(), time_zone="America/Santiago")
    busy = StakeholderFactory(persona=PersonaFactory(), time_zone="America/Santiago")
    sent(busy, at=now - timedelta(minutes=30))
    audience = list(Stakeholder.objects.select_related("persona").order_by("pk"))

    got = cadence_decisions(audience, channel="email", message_type="alert", now=now)

    assert got == one_by_one(audience, channel="email", message_type="alert", now=now)
    assert (got[quiet.pk].allowed, got[busy.pk].blocking_rule) == (True, "cooldown")


def test_a_fallback_copy_of_another_type_today_does_not_hold_the_person():
    """The counts take a fallback copy for the type asked about (an upper bound): the
    person is then judged by `decide`, which knows the original was a report."""
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    person = StakeholderFactory(persona=PersonaFactory(**{**UNCAPPED, "max_alert_per_day": 1}))
    original = sent(person, at=now - timedelta(hours=3), kind="report", status="failed")
    sent(person, channel="sms", at=now - timedelta(hours=2), kind="custom", fallback_of=original)

    decision = screened_alone(person, channel="sms", now=now)

    assert decision.allowed


def test_every_time_zone_and_cooldown_is_counted_in_one_query():
    now = BASE  # a Monday
    personas = [
        PersonaFactory(name="hourly", cooldown_hours=1),
        PersonaFactory(name="two-hourly", cooldown_hours=2),
    ]
    for index, zone in enumerate(ZONES[:4] * 2):
        person = StakeholderFactory(persona=personas[index // 4], time_zone=zone)
        sent(person, at=now - timedelta(days=3))  # last week: nobody is held
    audience = list(Stakeholder.objects.select_related("persona"))

    with CaptureQueriesContext(connection) as captured:
        got = cadence_decisions(audience, channel="email", message_type="alert", now=now)

    assert len(captured) == 1
    assert all(decision.allowed for decision in got.values())
    assert got == one_by_one(audience, channel="email", message_type="alert", now=now)


def test_an_audience_whose_rules_count_nothing_is_decided_without_a_query():
    now = BASE
    person = StakeholderFactory(persona=PersonaFactory(**UNCAPPED), time_zone="Asia/Kolkata")
    sent(person, at=now - timedelta(minutes=5))

    with CaptureQueriesContext(connection) as captured:
        got = cadence_decisions([person], channel="email", message_type="alert", now=now)

    assert len(captured) == 0
    assert got == {person.pk: Decision(True, None, now)}


def one_of(values: list[str]) -> set[str]:
    """The recipient keys `_OneOf` picks out of deliveries to "a,b", "c" and "d"."""
    from django.db.models import F

    if not Delivery.objects.exists():
        notification = NotificationFactory()
        for key in ("a,b", "c", "d"):
            Delivery.objects.create(
                notification=notification,
                recipient_key=key,
                channel="email",
                address="someone@example.org",
                idempotency_key=key,
                send_at=BASE,
            )
    found = Delivery.objects.filter(cadence_checks._OneOf(F("recipient_key"), values))
    return set(found.values_list("recipient_key", flat=True))


def test_one_of_matches_exactly_the_keys_given():
    assert one_of(["c", "d", "e"]) == {"c", "d"}
    assert one_of(["a,b", "c"]) == {"a,b", "c"}  # a comma of its own: an IN list
    assert one_of(["a"]) == set()


@pytest.mark.postgres
def test_on_postgresql_one_of_matches_exactly_the_keys_given():
    assert connection.vendor == "postgresql"
    assert one_of(["c", "d", "e"]) == {"c", "d"}
    assert one_of(["a,b", "c"]) == {"a,b", "c"}
    assert one_of(["a"]) == set()
