"""Cadence over the outbox: stakeholders' histories from one query, and the send-time
re-check that dispatch runs on every claimed stakeholder delivery (seed 003's safety check).

At send time a stakeholder delivery is

- cancelled with reason "resolved" when the context it is about has cleared (the kiosk is
  healthy again): a late alert about a fixed problem is noise;
- sent when the person's cadence on its channel allows it now;
- else moved to its fallback channel when the cadence there allows it (email → SMS);
- else cancelled as expired when cadence would hold it past its expiry;
- else deferred to the earliest moment the cadence allows, with the rule as the reason.

Nothing is dropped without a recorded reason.

(notifications.triggers imports this module; this one imports it back only inside the
functions that need the evaluator registry.)
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from django.db.models import DateTimeField
from django.db.models.functions import Coalesce

from cadence.models import TYPE_LIMIT_FIELDS, Persona, Stakeholder
from cadence.policy import HISTORY_WINDOW, Decision, Rules, Sent, decide, replay
from notifications.dispatch import SendDecision, register_send_time_check
from notifications.models import Delivery, Notification

STAKEHOLDER_PREFIX = "stakeholder:"

# What occupies a person's time line: sent (and tracked) messages, messages being handed
# over or that may have been, and messages scheduled for later.
COUNTING_STATUSES = (
    Delivery.Status.SENT,
    Delivery.Status.DELIVERED,
    Delivery.Status.OPENED,
    Delivery.Status.CLICKED,
    Delivery.Status.SENDING,
    Delivery.Status.SCHEDULED,
    Delivery.Status.UNKNOWN,
)
# What a person has really been told (the what-if replays these).
TOLD_STATUSES = (
    Delivery.Status.SENT,
    Delivery.Status.DELIVERED,
    Delivery.Status.OPENED,
    Delivery.Status.CLICKED,
    Delivery.Status.UNKNOWN,
)


def stakeholder_key(stakeholder_id: int) -> str:
    return f"{STAKEHOLDER_PREFIX}{stakeholder_id}"


def stakeholder_id(recipient_key: str) -> int | None:
    if not recipient_key.startswith(STAKEHOLDER_PREFIX):
        return None
    try:
        return int(recipient_key[len(STAKEHOLDER_PREFIX) :])
    except ValueError:
        return None


def stakeholder_histories(
    stakeholder_ids: Iterable[int], *, now: datetime, exclude_ids: Iterable[int] = ()
) -> dict[tuple[int, str], list[Sent]]:
    """{(stakeholder id, channel): messages} from one query over the outbox: everything
    counted from a month back on, later schedules included.

    A message's time is when it was sent, else when it is due. A fallback delivery counts
    with its original's message type (the engine's fallback copy does not carry it).
    """
    keys = [stakeholder_key(i) for i in stakeholder_ids]
    if not keys:
        return {}
    rows = (
        Delivery.objects.filter(
            recipient_key__in=keys,
            status__in=COUNTING_STATUSES,
            send_at__gte=now - HISTORY_WINDOW,
        )
        .exclude(pk__in=list(exclude_ids))
        .annotate(
            at=Coalesce("sent_at", "send_at", output_field=DateTimeField()),
            kind=Coalesce("fallback_of__message_type", "message_type"),
        )
        .values_list("recipient_key", "channel", "at", "kind")
    )
    histories: dict[tuple[int, str], list[Sent]] = defaultdict(list)
    for recipient_key, channel, at, kind in rows:
        histories[(stakeholder_id(recipient_key), channel)].append(Sent(at, kind))
    return dict(histories)


def _originals(deliveries: list[Delivery]) -> dict[int, tuple[str, str, int]]:
    """What the engine's fallback copy leaves out: {original id: (type, context key,
    notification id)}."""
    ids = {d.fallback_of_id for d in deliveries if d.fallback_of_id}
    if not ids:
        return {}
    return {
        pk: (kind, key, notification)
        for pk, kind, key, notification in Delivery.objects.filter(pk__in=ids).values_list(
            "pk", "message_type", "context_key", "notification_id"
        )
    }


def _cleared(deliveries, contexts: dict[int, tuple[str, int]], *, now) -> set[int]:
    """Ids of the deliveries whose context has cleared. A grouped message counts as
    cleared only when every context it lists has."""
    from notifications.triggers import GROUP_PREFIX, cleared_contexts

    groups = {n for key, n in contexts.values() if key.startswith(GROUP_PREFIX)}
    listed = {}
    if groups:
        listed = {
            pk: (context or {}).get("context_keys", [])
            for pk, context in Notification.objects.filter(pk__in=groups).values_list(
                "pk", "context"
            )
        }
    wanted = set()
    for key, notification in contexts.values():
        wanted |= set(listed.get(notification, [])) if key.startswith(GROUP_PREFIX) else {key}
    cleared = cleared_contexts(wanted, now=now) if wanted else set()
    out = set()
    for delivery in deliveries:
        key, notification = contexts[delivery.id]
        keys = listed.get(notification, []) if key.startswith(GROUP_PREFIX) else [key]
        if keys and all(k in cleared for k in keys):
            out.add(delivery.id)
    return out


def cadence_send_time_check(deliveries: list[Delivery], now: datetime) -> dict:
    """Registered with dispatch: {delivery id: SendDecision} for the stakeholder
    deliveries that must not go now (see the module docstring)."""
    mine = [d for d in deliveries if stakeholder_id(d.recipient_key) is not None]
    if not mine:
        return {}
    originals = _originals(mine)
    kinds, contexts = {}, {}
    for d in mine:
        kind, key, notification = originals.get(
            d.fallback_of_id, (d.message_type, d.context_key, d.notification_id)
        )
        kinds[d.id] = kind
        contexts[d.id] = (key, notification)
    decisions: dict[int, SendDecision] = {}
    with_context = [d for d in mine if contexts[d.id][0]]
    for pk in _cleared(with_context, contexts, now=now):
        decisions[pk] = SendDecision(
            "cancel", "resolved: what it was about has cleared before it could be sent"
        )
    remaining = sorted((d for d in mine if d.id not in decisions), key=lambda d: (d.send_at, d.id))
    if not remaining:
        return decisions
    ids = {stakeholder_id(d.recipient_key) for d in remaining}
    people = {s.pk: s for s in Stakeholder.objects.filter(pk__in=ids).select_related("persona")}
    histories = stakeholder_histories(ids, now=now, exclude_ids=[d.id for d in deliveries])
    for delivery in remaining:
        person = people.get(stakeholder_id(delivery.recipient_key))
        if person is None:
            continue  # no longer a stakeholder: nothing to limit
        decision = _decide_one(delivery, person, kinds[delivery.id], histories, now)
        if decision is not None:
            decisions[delivery.id] = decision
    return decisions


def _decide_one(delivery, person, kind, histories, now) -> SendDecision | None:
    rules, tz = person.rules(), person.tz
    timeline = histories.setdefault((person.pk, delivery.channel), [])
    # Allowed now is judged on what has gone (or is going) out: a later schedule was placed
    # around this delivery and is re-judged when its own time comes.
    past = [s for s in timeline if s.at <= now]
    now_decision = decide(rules, past, kind, now, tz)
    if now_decision.allowed:
        timeline.append(Sent(now, kind))
        return None
    held = f"cadence: {now_decision.label} on {delivery.channel} ({now_decision.detail})"
    fallback_note = ""
    if delivery.fallback_channel and delivery.fallback_address:
        other = histories.setdefault((person.pk, delivery.fallback_channel), [])
        fallback = decide(rules, [s for s in other if s.at <= now], kind, now, tz)
        if fallback.allowed:
            other.append(Sent(now, kind))
            return SendDecision("fallback", held)
        fallback_note = f"; {delivery.fallback_channel} is held too ({fallback.label})"
    # When it may go: placed around everything already on the time line, later
    # schedules included, so it does not land on top of one of them.
    later = decide(rules, timeline, kind, now, tz)
    if delivery.expires_at and later.not_before >= delivery.expires_at:
        return SendDecision(
            "cancel",
            f"expired: {held} until {later.not_before.astimezone(tz):%Y-%m-%d %H:%M %Z}, "
            f"after its expiry {delivery.expires_at.astimezone(tz):%Y-%m-%d %H:%M %Z}"
            f"{fallback_note}",
        )
    timeline.append(Sent(later.not_before, kind))
    return SendDecision(
        "defer",
        f"{held} — deferred until {later.not_before.astimezone(tz):%Y-%m-%d %H:%M %Z}"
        f"{fallback_note}",
        until=later.not_before,
    )


def register() -> None:
    register_send_time_check(cadence_send_time_check)


# --- the simulator's questions ---------------------------------------------------------------


@dataclass(frozen=True)
class Simulation:
    stakeholder: Stakeholder
    channel: str
    message_type: str
    at: datetime
    rules: Rules
    decision: Decision
    history: list[Sent]

    @property
    def counts(self) -> dict[str, int]:
        """Messages in the local day, week and month of `at` (scheduled ones included)."""
        tz = self.stakeholder.tz
        day = self.at.astimezone(tz).date()
        dates = [(s.at.astimezone(tz).date(), s.message_type) for s in self.history]
        return {
            "day": sum(1 for d, _ in dates if d == day),
            "type_day": sum(1 for d, t in dates if d == day and t == self.message_type),
            "week": sum(1 for d, _ in dates if d.isocalendar()[:2] == day.isocalendar()[:2]),
            "month": sum(1 for d, _ in dates if (d.year, d.month) == (day.year, day.month)),
        }


def cadence_simulate(
    *, stakeholder: Stakeholder, channel: str, message_type: str, at: datetime
) -> Simulation:
    """What Layer 2 would decide for one more message to this person at `at`, given every
    message on their time line (as the trigger evaluator sees it when it stages)."""
    history = stakeholder_histories([stakeholder.pk], now=at).get((stakeholder.pk, channel), [])
    rules = stakeholder.rules()
    decision = decide(rules, history, message_type, at, stakeholder.tz)
    return Simulation(stakeholder, channel, message_type, at, rules, decision, history)


@dataclass
class PersonReplay:
    stakeholder: Stakeholder
    replayed: int = 0
    held: list[tuple[str, Sent, Decision]] = field(default_factory=list)  # (channel, ...)

    @property
    def rules_hit(self) -> dict[str, int]:
        hits: dict[str, int] = defaultdict(int)
        for _, _, decision in self.held:
            hits[decision.label] += 1
        return dict(hits)


@dataclass
class WhatIf:
    persona: Persona
    rules: Rules
    since: datetime
    until: datetime
    people: list[PersonReplay]

    @property
    def replayed(self) -> int:
        return sum(p.replayed for p in self.people)

    @property
    def held(self) -> int:
        return sum(len(p.held) for p in self.people)


WHAT_IF_DAYS = 7
_OVERRIDABLE = ("cooldown_hours", "max_per_day", "max_per_week", "max_per_month")


def cadence_what_if(*, persona: Persona, rules: Rules, now: datetime) -> WhatIf:
    """Replay the last 7 days of messages that went to the persona's stakeholders under
    `rules` (each person's own overrides still on top): how many would have been held, and
    for whom. Two queries."""
    since = now - timedelta(days=WHAT_IF_DAYS)
    people = list(Stakeholder.objects.filter(persona=persona, is_active=True).order_by("name"))
    rows = (
        Delivery.objects.filter(
            recipient_key__in=[p.recipient_key for p in people],
            status__in=TOLD_STATUSES,
            send_at__gte=since - HISTORY_WINDOW,
        )
        .annotate(
            at=Coalesce("sent_at", "send_at", output_field=DateTimeField()),
            kind=Coalesce("fallback_of__message_type", "message_type"),
        )
        .filter(at__lte=now)
        .values_list("recipient_key", "channel", "at", "kind")
    )
    timelines: dict[tuple[int, str], list[Sent]] = defaultdict(list)
    for recipient_key, channel, at, kind in rows:
        timelines[(stakeholder_id(recipient_key), channel)].append(Sent(at, kind))
    replays = []
    for person in people:
        own = person.overrides()
        person_rules = replace(
            rules,
            **{k: v for k, v in own.items() if k in _OVERRIDABLE},
            type_limits={
                **rules.type_limits,
                **{t: own[name] for name, t in TYPE_LIMIT_FIELDS if name in own},
            },
        )
        result = PersonReplay(person)
        for (pid, channel), sends in sorted(timelines.items(), key=lambda item: item[0][1]):
            if pid != person.pk:
                continue
            window = [s for s in sends if s.at >= since]
            verdicts = replay(
                person_rules, person.tz, prior=[s for s in sends if s.at < since], sends=window
            )
            result.replayed += len(window)
            result.held += [(channel, s, d) for s, d in verdicts if not d.allowed]
        replays.append(result)
    return WhatIf(persona, rules, since, now, replays)
