"""Workload 5 — cadence decisions: may one more alert go to each of 10,000 stakeholders now,
and if not, when? Against 1,000,000 past deliveries (100 per person over the last year, on
email and SMS; four time zones; the seed's default rules).

Herald: `cadence_decisions` — the stakeholders' recent counts from grouped queries, full
time lines only for the people a rule holds, then `cadence.policy.decide`.

Baselines, on the same data and `now`:
- a per-stakeholder ORM loop: each person's history (one query each), then `decide`;
- the floor: one hand-written SQL GROUP BY returning each person's last message and their
  counts for the day, the week and the month (in UTC, a yes/no only: no time zones, no
  per-type limits, no "when").
Herald must give the same decisions as the loop (checked).
"""

from __future__ import annotations

import random
from datetime import timedelta

from django.db import connection

from bench.db import analyze, fast_insert, wipe
from bench.harness import REPEAT, Workload, best, measure
from bench.workloads.common import NOW, Context

ZONES = ("UTC", "America/New_York", "Europe/London", "Asia/Kolkata")
PER_PERSON = 100
YEAR = timedelta(days=365)


def run(ctx: Context) -> Workload:
    from cadence.models import Stakeholder

    people = ctx.size(10_000, minimum=100)
    result = Workload(
        5,
        "Cadence decisions",
        f"{people:,} stakeholders against {people * PER_PERSON:,} past deliveries",
    )
    wipe()
    _build(people)
    stakeholders = list(Stakeholder.objects.select_related("persona").order_by("id"))

    heralds, loops, floors = [], [], []
    for repeat in range(REPEAT):
        with measure("Herald: cadence_decisions", people, "decisions") as herald:
            decisions = _herald(stakeholders)
        heralds.append(herald)
        if repeat < 2:  # the loop takes seconds: twice is enough to take the better
            with measure("per-stakeholder ORM loop", people, "decisions") as loop:
                expected = _loop()
            assert decisions == expected, _first_difference(decisions, expected)
            loops.append(loop)
        with measure("floor: one hand-written SQL GROUP BY", people, "decisions") as floor:
            floor_rows = _floor()
        assert 0 < len(floor_rows) <= people, len(floor_rows)
        floors.append(floor)
    herald = result.herald = best(heralds)
    loop, floor = best(loops), best(floors)

    allowed = sum(d.allowed for d in decisions.values())
    result.notes.append(
        f"{allowed:,} of {people:,} may be sent to now; the others get the rule and the "
        "time it passes (same answers as the loop)"
    )
    result.compare(loop, at_least=20.0)
    result.compare(floor, at_least=0.5, target="within 2× (≥ 0.5×)")
    result.check(
        "queries",
        "constant (not per stakeholder)",
        f"{herald.queries} for {people:,} people",
        herald.queries < 20,
    )
    return result


def _herald(stakeholders) -> dict:
    from notifications.cadence_checks import cadence_decisions

    return cadence_decisions(stakeholders, channel="email", message_type="alert", now=NOW)


def _loop() -> dict:
    """The obvious code: each person's time line, then the policy."""
    from django.db.models import DateTimeField
    from django.db.models.functions import Coalesce

    from cadence.models import Stakeholder
    from cadence.policy import HISTORY_WINDOW, Sent, decide
    from notifications.cadence_checks import COUNTING_STATUSES
    from notifications.models import Delivery

    decisions = {}
    for person in Stakeholder.objects.select_related("persona").order_by("id"):
        history = [
            Sent(at, kind)
            for at, kind in Delivery.objects.filter(
                recipient_key=person.recipient_key,
                channel="email",
                status__in=COUNTING_STATUSES,
                send_at__gte=NOW - HISTORY_WINDOW,
            )
            .annotate(
                at=Coalesce("sent_at", "send_at", output_field=DateTimeField()),
                kind=Coalesce("fallback_of__message_type", "message_type"),
            )
            .values_list("at", "kind")
        ]
        decisions[person.pk] = decide(person.rules(), history, "alert", NOW, person.tz)
    return decisions


def _floor() -> list:
    """The least a database can answer: per person, the counts the rules need (messages
    within the hour's cooldown, today's, today's alerts, this week's, this month's), in one
    hand-written GROUP BY over the same index range, on the UTC calendar (no time zones,
    no "when")."""
    from cadence.policy import HISTORY_WINDOW
    from notifications.models import Delivery

    day = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
    week = day - timedelta(days=day.weekday())
    month = day.replace(day=1)
    hour = timedelta(hours=1)
    table = Delivery._meta.db_table
    sql = f"""
        SELECT recipient_key,
               SUM(CASE WHEN COALESCE(sent_at, send_at) > %s
                         AND COALESCE(sent_at, send_at) < %s THEN 1 ELSE 0 END),
               SUM(CASE WHEN COALESCE(sent_at, send_at) >= %s THEN 1 ELSE 0 END),
               SUM(CASE WHEN COALESCE(sent_at, send_at) >= %s
                         AND message_type = 'alert' THEN 1 ELSE 0 END),
               SUM(CASE WHEN COALESCE(sent_at, send_at) >= %s THEN 1 ELSE 0 END),
               SUM(CASE WHEN COALESCE(sent_at, send_at) >= %s THEN 1 ELSE 0 END)
        FROM {table}
        WHERE recipient_key LIKE 'stakeholder:%%' AND channel = 'email'
          AND status IN ('sent', 'delivered', 'opened', 'clicked', 'sending', 'scheduled',
                         'unknown')
          AND send_at >= %s
        GROUP BY recipient_key
    """  # noqa: S608 (the table name is ours)
    field = Delivery._meta.get_field("send_at")
    params = [
        field.get_db_prep_value(value, connection)
        for value in (NOW - hour, NOW + hour, day, day, week, month, NOW - HISTORY_WINDOW)
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _first_difference(got: dict, expected: dict) -> str:
    for key in expected:
        if got.get(key) != expected[key]:
            return f"stakeholder {key}: Herald {got.get(key)} vs loop {expected[key]}"
    return "different keys"


def _build(people: int) -> None:
    from cadence.models import Persona, Stakeholder
    from notifications.models import Delivery, MessageTemplate, Notification

    rng = random.Random(5)
    persona = Persona.objects.create(name="Manager")
    Stakeholder.objects.bulk_create(
        [
            Stakeholder(
                name=f"Person {i:05d}",
                email=f"person{i:05d}@example.org",
                phone=f"+1415{i:07d}",
                persona=persona,
                fallback_channel="sms",
                time_zone=ZONES[i % len(ZONES)],
            )
            for i in range(people)
        ],
        batch_size=2000,
    )
    ids = list(Stakeholder.objects.order_by("id").values_list("id", flat=True))
    template = MessageTemplate.objects.create(name="alert", channel="email", body="Alert")
    notification = Notification.objects.create(template=template, origin="bench")
    statuses = ["sent"] * 15 + ["delivered", "opened", "failed"]

    def history():
        for person in ids:
            for k in range(PER_PERSON):
                at = NOW - YEAR * rng.random()
                status = rng.choice(statuses)
                if k == 0 and person % 10 == 0:  # one in ten has a message queued for later
                    at, status = NOW + timedelta(hours=rng.uniform(1, 72)), "scheduled"
                yield {
                    "notification_id": notification.id,
                    "recipient_key": f"stakeholder:{person}",
                    "channel": "sms" if k % 5 == 4 else "email",
                    "address": f"person{person}@example.org",
                    "message_type": "alert" if k % 3 else "report",
                    "status": status,
                    "idempotency_key": f"history:{person}:{k}",
                    "send_at": at,
                    "sent_at": at if status != "scheduled" else None,
                    "created_at": at,
                    "updated_at": at,
                }

    # A million rows: executemany (bulk_create takes minutes here; see fast_insert).
    fast_insert(Delivery, history())
    analyze()
