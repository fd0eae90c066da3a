"""Cadence over the outbox: stakeholders' histories from one query, and the send-time
re-check that dispatch runs on every claimed stakeholder delivery (seed 003's safety check).

At send time, before the suppression list is read (the old address may be the one that
bounced), a stakeholder delivery is

- cancelled with reason "inactive" when the person was marked inactive after it was queued
  (inactive stakeholders are never contacted), "deleted" when they were deleted;
- re-addressed when the person's address on its channel (or its fallback channel) changed
  after it was queued: put back, due now, to go to where they are now; by its fallback
  channel when its own has no address now; cancelled when neither has one.

Then it is

- cancelled with reason "resolved" when the context it is about has cleared (the kiosk is
  healthy again): a late alert about a fixed problem is noise;
- sent when the person's cadence on its channel allows it now;
- else moved to its fallback channel when the cadence there allows it (email → SMS);
- else cancelled as expired when cadence would hold it past its expiry;
- else deferred to the earliest moment the cadence allows, with the rule as the reason.

Nothing is dropped without a recorded reason.

When staff loosen someone's cadence, what it held for them is re-planned at once
(`cadence_replan`, on cadence.signals.cadence_changed): the re-check above only ever
catches a stricter cadence, when a delivery comes due.

(notifications.triggers imports this module; this one imports it back only inside the
functions that need the evaluator registry.)
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import astuple, dataclass, field, replace
from datetime import datetime, timedelta
from operator import attrgetter
from zoneinfo import ZoneInfo

from django.db import connections, transaction
from django.db.models import Count, DateTimeField, F, Lookup, Q, Value, prefetch_related_objects
from django.db.models.functions import Coalesce
from django.db.models.lookups import In

from cadence.models import CADENCE_FIELDS, TYPE_LIMIT_FIELDS, Persona, Stakeholder
from cadence.policy import (
    HISTORY_WINDOW,
    Counts,
    Decision,
    Periods,
    Rules,
    Sent,
    allowed_by_counts,
    decide,
    periods,
    replay,
)
from cadence.signals import cadence_changed
from notifications.dispatch import SendDecision, register_send_time_check
from notifications.models import Delivery, DeliveryEvent, Notification

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
    stakeholder_ids: Iterable[int],
    *,
    now: datetime,
    exclude_ids: Iterable[int] = (),
    channels: Iterable[str] | None = None,
    since: datetime | None = None,
) -> dict[tuple[int, str], list[Sent]]:
    """{(stakeholder id, channel): messages} from one query over the outbox: everything
    counted from a month back on, later schedules included.

    A message's time is when it was sent, else when it is due. A fallback delivery counts
    with its original's message type (the engine's fallback copy does not carry it).
    `channels` and `since` (a message time) narrow it for callers that need less.
    """
    keys = [stakeholder_key(i) for i in stakeholder_ids]
    if not keys:
        return {}
    rows = (
        Delivery.objects.filter(
            _OneOf(F("recipient_key"), keys),
            status__in=COUNTING_STATUSES,
            send_at__gte=now - HISTORY_WINDOW,
        )
        .filter(**({} if channels is None else {"channel__in": list(channels)}))
        .exclude(pk__in=list(exclude_ids))
        .annotate(
            at=Coalesce("sent_at", "send_at", output_field=DateTimeField()),
            kind=Coalesce("fallback_of__message_type", "message_type"),
        )
        .filter(**({} if since is None else {"at__gte": since}))
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
    # The people locked (in id order, so two workers never wait on each other both ways)
    # until dispatch has written these decisions: another worker judging the same person
    # waits, then reads a history with them. Without it, each of two workers holding one of
    # a person's two due messages counted the other's (claimed) message and held its own.
    # Their personas are read after the lock, by a statement of their own: joined to the
    # locking query, a persona came as it was when that query began, before the staff
    # change (and its re-plan) that held the lock committed, and the old cadence held a
    # message the new one lets go.
    people = {
        s.pk: s for s in Stakeholder.objects.filter(pk__in=ids).select_for_update().order_by("pk")
    }
    prefetch_related_objects(list(people.values()), "persona")
    histories = stakeholder_histories(ids, now=now, exclude_ids=[d.id for d in deliveries])
    for delivery in remaining:
        person = people.get(stakeholder_id(delivery.recipient_key))
        if person is None:
            continue  # deleted meanwhile: the address check cancelled it (or will)
        decision = _decide_one(delivery, person, kinds[delivery.id], histories, now)
        if decision is not None:
            decisions[delivery.id] = decision
    return decisions


def stakeholder_address_check(deliveries: list[Delivery], now: datetime) -> dict:
    """Registered with dispatch, before the suppression list is read: {delivery id:
    SendDecision} for the stakeholder deliveries whose person was marked inactive or whose
    address changed since they were queued (see the module docstring)."""
    ids = {stakeholder_id(d.recipient_key) for d in deliveries} - {None}
    if not ids:
        return {}
    people = {s.pk: s for s in Stakeholder.objects.filter(pk__in=ids)}
    decisions = {}
    for delivery in deliveries:
        person_id = stakeholder_id(delivery.recipient_key)
        if person_id is None:
            continue  # not to a stakeholder (a customer's, a partner's)
        person = people.get(person_id)
        if person is None:  # removed from Herald: no longer someone it writes to
            decisions[delivery.id] = SendDecision(
                "cancel", f"deleted: stakeholder {person_id} was deleted before it could be sent"
            )
        elif not person.is_active:
            decisions[delivery.id] = SendDecision(
                "cancel", f"inactive: {person} was marked inactive before it could be sent"
            )
        elif (moved := _readdress(delivery, person)) is not None:
            decisions[delivery.id] = moved
    return decisions


def _readdress(delivery, person) -> SendDecision | None:
    """Where the delivery goes now that the person's addresses may have changed since it
    was queued (None: they have not)."""
    address = person.address_for(delivery.channel)
    fallback = person.address_for(delivery.fallback_channel) if delivery.fallback_channel else ""
    if (address, fallback) == (delivery.address, delivery.fallback_address):
        return None
    gone = f"no address: {person} has no {delivery.channel} address now (it was {delivery.address})"
    if not address and not fallback:
        return SendDecision("cancel", gone)
    if not address and fallback == delivery.fallback_address:
        return SendDecision("fallback", gone)
    changes = {
        "fallback_address": fallback,
        "fallback_channel": delivery.fallback_channel if fallback else "",
    }
    what = []
    if address and address != delivery.address:
        changes["address"] = address
        what.append(f"{delivery.channel} {delivery.address} → {address}")
    if fallback != delivery.fallback_address:
        what.append(
            f"fallback {delivery.fallback_channel} {delivery.fallback_address or '(none)'} → "
            f"{fallback or '(none)'}"
        )
    return SendDecision(
        "readdress",
        f"readdressed: {person}'s address changed after it was queued ({'; '.join(what)})",
        changes=changes,
    )


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
    # schedules included, so it does not land on top of one of them. The reason names the
    # rule that decides that time (a later schedule can push it past what held it now).
    later = decide(rules, timeline, kind, now, tz)
    held = f"cadence: {later.label} on {delivery.channel} ({later.detail})"
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


# What dispatch and the evaluator write as the reason of a delivery the cadence holds
# (Decision.reason, and the send-time check's deferral): the only holds re-planned below.
CADENCE_HOLD_PREFIX = "cadence:"


def cadence_replan(stakeholder_ids: Iterable[int], *, now: datetime, why: str) -> int:
    """After staff changed these people's cadence (`why` says how): their deliveries that
    the cadence holds for later are placed again by the cadence as it is now, the way the
    evaluator places a new one (`decide` over the person's time line, later schedules
    included): due now when it allows them now, else at the earliest moment it allows.
    Returns how many moved.

    Only ever brought forward: a stricter cadence is enforced when they come due (the
    send-time check). Deliveries held for anything else (pacing, a fallback's wait) are
    left as they are, and so are an inactive person's (they are cancelled when due). One
    the cadence holds that is also frozen by a kill switch or in a halted run is re-planned
    too: the switch or the halt holds it only until it is lifted, and then its send time is
    the cadence's. Nothing is sent here: a moved delivery is sent by dispatch, which checks
    the cadence once more."""
    ids = set(stakeholder_ids)
    if not ids:
        return 0
    with transaction.atomic():
        # The people locked as the send-time check locks them: a worker judging one of
        # their due messages waits, then sees the new times.
        people = {
            s.pk: s
            for s in Stakeholder.objects.filter(pk__in=ids, is_active=True)
            .select_related("persona")
            .select_for_update(of=("self",))
            .order_by("pk")
        }
        if not people:
            return 0
        held = Delivery.objects.filter(
            _OneOf(F("recipient_key"), [stakeholder_key(pk) for pk in people]),
            status=Delivery.Status.SCHEDULED,
            send_at__gt=now,
            status_reason__startswith=CADENCE_HOLD_PREFIX,
        )
        queued = sorted(held, key=lambda d: (d.send_at, d.id))
        if not queued:
            return 0
        originals = _originals(queued)
        histories = stakeholder_histories(people, now=now, exclude_ids=[d.id for d in queued])
        events = []
        for delivery in queued:
            person = people[stakeholder_id(delivery.recipient_key)]
            kind = originals.get(delivery.fallback_of_id, (delivery.message_type,))[0]
            timeline = histories.setdefault((person.pk, delivery.channel), [])
            decision = decide(person.rules(), timeline, kind, now, person.tz)
            if decision.not_before >= delivery.send_at:
                timeline.append(Sent(delivery.send_at, kind))
                continue
            was = f"was queued until {delivery.send_at.astimezone(person.tz):%Y-%m-%d %H:%M %Z}"
            if decision.allowed:
                reason = f"re-planned: {why}; its cadence lets it go now ({was})"
            else:
                reason = f"{decision.reason(person.tz)} (re-planned: {why}; {was})"
            if Delivery.objects.filter(
                pk=delivery.pk, status=Delivery.Status.SCHEDULED, send_at=delivery.send_at
            ).update(send_at=decision.not_before, status_reason=reason[:300], updated_at=now):
                timeline.append(Sent(decision.not_before, kind))
                events.append(
                    DeliveryEvent(
                        delivery=delivery,
                        kind=DeliveryEvent.Kind.REPLANNED,
                        at=now,
                        reason=reason[:300],
                    )
                )
            else:  # claimed or changed meanwhile: it keeps its place on the time line
                timeline.append(Sent(delivery.send_at, kind))
        DeliveryEvent.objects.bulk_create(events)
    return len(events)


def on_cadence_changed(sender, *, stakeholder_ids, now, why, **kwargs) -> int:
    """Receiver of cadence.signals.cadence_changed."""
    return cadence_replan(stakeholder_ids, now=now, why=why)


def register() -> None:
    register_send_time_check(stakeholder_address_check, before_suppressions=True)
    register_send_time_check(cadence_send_time_check)
    cadence_changed.connect(on_cadence_changed, dispatch_uid="cadence_replan")


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
        """Held messages by the rule that decided how long each waited (as their reasons
        name it), not the first rule each broke."""
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


def cadence_decisions(
    stakeholders: Iterable[Stakeholder], *, channel: str, message_type: str, now: datetime
) -> dict[int, Decision]:
    """Layer 2 for a whole audience: {stakeholder id: may one more message of `message_type`
    go on `channel` at `now`, and if not, which rule holds it and until when}.

    The counts the rules look at come from one grouped query over the whole audience (the
    database counts; nobody's messages are loaded). Only the people a rule holds get their
    time line (one more query) and `decide`, which finds when they may be told. The
    answers are those of `decide` over `stakeholder_histories`, person by person."""
    people = {person.pk: person for person in stakeholders}
    rules = _rules_of(people)
    counts = _counts(people, rules, channel=channel, message_type=message_type, now=now)
    decisions: dict[int, Decision] = {}
    held: dict[int, Stakeholder] = {}
    # An audience shares a few sets of rules and its counts are small numbers: each pair
    # is screened once, and everyone allowed shares one (frozen) Decision.
    screened: dict[tuple[int, tuple[int, ...]], bool] = {}
    allowed = Decision(True, None, now)
    for pk, person in people.items():
        found = counts.get(pk)  # None: a zone with irregular midnights
        if found is not None:
            key = (id(rules[pk]), found)
            if key not in screened:
                screened[key] = allowed_by_counts(rules[pk], Counts(*found), message_type)
            if screened[key]:
                decisions[pk] = allowed
                continue
        held[pk] = person
    if held:
        # decide() at `now` or later only looks at messages from the start of the current
        # week (of the month too under a monthly cap) or one cooldown back, whichever is
        # earliest: older ones are not loaded.
        monthly: dict[str, bool] = defaultdict(bool)
        for pk, person in held.items():
            monthly[person.time_zone] |= bool(rules[pk].max_per_month)
        since = min(
            min(now - timedelta(hours=rules[pk].cooldown_hours) for pk in held),
            *(_period_starts(now, zone, month=month) for zone, month in monthly.items()),
        )
        histories = stakeholder_histories(list(held), now=now, channels=[channel], since=since)
        for pk, person in held.items():
            history = histories.get((pk, channel), [])
            decisions[pk] = decide(rules[pk], history, message_type, now, person.tz)
    return decisions


def _period_starts(now: datetime, zone: str, *, month: bool) -> datetime:
    """Before the start of the week of `now` in `zone` (and of its month with `month`)."""
    local = now.astimezone(ZoneInfo(zone))
    week = (local - timedelta(days=local.weekday())).date()
    first = min(week, local.date().replace(day=1)) if month else week
    # A day's margin: the caller only needs a lower bound.
    return datetime(first.year, first.month, first.day, tzinfo=ZoneInfo(zone)) - timedelta(days=1)


_RULES_KEY = attrgetter("persona_id", *CADENCE_FIELDS)


def _rules_of(people: dict[int, Stakeholder]) -> dict[int, Rules]:
    """Each person's effective rules, worked out once per persona and set of overrides."""
    shared: dict[tuple, Rules] = {}
    rules = {}
    for pk, person in people.items():
        key = _RULES_KEY(person)
        if key not in shared:
            shared[key] = person.rules()
        rules[pk] = shared[key]
    return rules


# Keys per query where the database caps the parameters of a statement: well under
# SQLite's 32,766. PostgreSQL has no such cap and takes the audience in one query (each
# query reads the month's rows of the outbox, whoever they are for).
_COUNT_CHUNK = 5000
# Calendars (a zone's day, week and month around `now`) counted side by side in one
# query: each adds four columns that every row is tested against.
_CALENDARS_PER_QUERY = 8
_NONE_COUNTED = astuple(Counts())


def _counts(
    people: dict[int, Stakeholder],
    rules: dict[int, Rules],
    *,
    channel: str,
    message_type: str,
    now: datetime,
) -> dict[int, tuple[int, ...]]:
    """{stakeholder id: the fields of their Counts around `now`, as a tuple}, for the
    people whose time zone has regular midnights (the others are left out: the caller
    decides them from their time line). A count that no rule of the audience reads (its
    cap is 0) is 0, and `type_day` may count more than there are (see `_count_chunk`):
    `allowed_by_counts` can then only hold someone `decide` would let through, never the
    reverse, and the held are judged by `decide`.

    One grouped query for the whole audience: each calendar (the day, week and month of
    `now` in a zone; zones that agree share one) and each cooldown has columns of its own,
    and a person's counts are read from theirs. (A query per zone and cooldown read the
    same rows once each: on PostgreSQL a heap scan of the month's rows every time.)"""
    by_zone: dict[str, list[int]] = defaultdict(list)
    for pk, person in people.items():
        by_zone[person.time_zone].append(pk)
    calendar_of = {zone: periods(now, ZoneInfo(zone)) for zone in by_zone}
    by_calendar: dict[Periods, list[int]] = defaultdict(list)
    for zone, ids in by_zone.items():
        if calendar_of[zone] is not None:
            by_calendar[calendar_of[zone]] += ids
    calendars = list(by_calendar)
    capped = connections[Delivery.objects.db].features.max_query_params is not None
    found: dict[int, tuple[int, ...]] = {}
    for first in range(0, len(calendars), _CALENDARS_PER_QUERY):
        batch = calendars[first : first + _CALENDARS_PER_QUERY]
        ids = [pk for bounds in batch for pk in by_calendar[bounds]]
        size = _COUNT_CHUNK if capped else len(ids)
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            found.update(
                _count_chunk(
                    {pk: people[pk] for pk in chunk},
                    rules,
                    calendar_of=calendar_of,
                    channel=channel,
                    message_type=message_type,
                    now=now,
                )
            )
    return found


def _count_chunk(
    people: dict[int, Stakeholder],
    rules: dict[int, Rules],
    *,
    calendar_of: dict[str, Periods | None],
    channel: str,
    message_type: str,
    now: datetime,
) -> dict[int, tuple[int, ...]]:
    """_counts for `people` (all with regular midnights): one query."""
    zones = {person.time_zone for person in people.values()}
    calendars = list(dict.fromkeys(calendar_of[zone] for zone in zones))
    cooldowns = sorted({rules[pk].cooldown_hours for pk in people})
    # Only what some rule here looks at is counted (a cap of 0 never reads its count): the
    # others are a constant 0, so that every row has the same layout.
    shared = {id(rules[pk]): rules[pk] for pk in people}.values()
    counted = {
        "type_day": any(r.type_limits.get(message_type, 0) for r in shared),
        "day": any(r.max_per_day for r in shared),
        "week": any(r.max_per_week for r in shared),
        "month": any(r.max_per_month for r in shared),
    }
    # A fallback copy counts with its original's type, which the copy does not carry:
    # rather than join every row to its original, copies count as of the type asked about.
    # The count is then at most one too many per copy: whoever it holds is judged again
    # by `decide`, so nobody is let through who should not be.
    of_type = Q(message_type=message_type) | Q(fallback_of__isnull=False)
    columns = {}
    spans = []  # (start, end) of every column counted
    for index, hours in enumerate(cooldowns):
        reach = timedelta(hours=max(hours, 0))
        columns[f"near_{index}"] = Value(0)
        if hours > 0:
            # |at - now| < cooldown, as decide() has it
            spans.append((now - reach, now + reach))
            columns[f"near_{index}"] = _within(spans[-1], open_start=True)
    for index, bounds in enumerate(calendars):
        for name, span, *also in (
            ("day", bounds.day),
            ("type_day", bounds.day, of_type),
            ("week", bounds.week),
            ("month", bounds.month),
        ):
            columns[f"{name}_{index}"] = Value(0)
            if counted[name]:
                spans.append(span)
                columns[f"{name}_{index}"] = _within(span, *also)
    if not spans:  # no rule here counts anything
        return dict.fromkeys(people, _NONE_COUNTED)
    # Where each person's counts are in a row: (near, day, type_day, week, month) from the
    # column of their cooldown and the four of their calendar.
    near_at = {hours: 1 + index for index, hours in enumerate(cooldowns)}
    calendar_at = {bounds: 1 + len(cooldowns) + 4 * i for i, bounds in enumerate(calendars)}
    zone_at = {zone: calendar_at[calendar_of[zone]] for zone in zones}
    counting = (
        Delivery.objects.filter(
            _OneOf(F("recipient_key"), [stakeholder_key(pk) for pk in people]),
            channel=channel,
            status__in=COUNTING_STATUSES,
            send_at__gte=now - HISTORY_WINDOW,
        )
        .annotate(at=Coalesce("sent_at", "send_at", output_field=DateTimeField()))
        # The index range is the month's (on send_at) either way, but the rows outside
        # every span counted are not grouped: without a monthly cap, all but the week's.
        .filter(at__gte=min(start for start, _ in spans), at__lt=max(end for _, end in spans))
        .values("recipient_key")
        .annotate(**columns)
        .order_by()
        .values_list("recipient_key", *columns)
    )
    found = dict.fromkeys(people, _NONE_COUNTED)
    # Plain integers on every database: read off the cursor, without Django's converter
    # call per value (several per person, more than the rest of the loop).
    with connections[counting.db].cursor() as cursor:
        cursor.execute(*counting.query.get_compiler(counting.db).as_sql())
        for row in cursor.fetchall():
            pk = stakeholder_id(row[0])
            near, at = near_at[rules[pk].cooldown_hours], zone_at[people[pk].time_zone]
            found[pk] = (row[near], *row[at : at + 4])
    return found


class _OneOf(Lookup):
    """`lhs IN (values)`. On PostgreSQL the values go as one comma-separated string
    (`lhs = ANY(string_to_array(%s, ','))`, folded into an array when the query is planned:
    the same plan): a whole audience is thousands of keys, and as many placeholders, or an
    array the driver quotes element by element, cost more than the database takes to
    count. Values with a comma of their own are sent as an IN list."""

    lookup_name = "one_of"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        return In(self.lhs, self.rhs).as_sql(compiler, connection)

    def as_postgresql(self, compiler, connection):
        joined = ",".join(self.rhs)
        if not self.rhs or joined.count(",") != len(self.rhs) - 1:
            return self.as_sql(compiler, connection)
        lhs, params = self.process_lhs(compiler, connection)
        return f"{lhs} = ANY(string_to_array(%s, ','))", (*params, joined)


def _within(bounds: tuple[datetime, datetime], *also: Q, open_start: bool = False) -> Count:
    start = {"at__gt" if open_start else "at__gte": bounds[0]}
    return Count("pk", filter=Q(*also, **start, at__lt=bounds[1]))
