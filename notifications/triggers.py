"""Trigger evaluation (seed 003): every five minutes each active trigger workflow asks the
evaluators of its events what is happening now, and tells its audience.

For each context an evaluator reports (one kiosk + project + set of issues, one project's
morale, ...):

1. Layer 1 — the workflow fires a context at most once per cooldown. The fire is claimed
   with a conditional update of its TriggerCooldown row (or an insert that loses to a
   concurrent one), inside the transaction that stages the deliveries, so two overlapping
   ticks cannot both fire it and a crash cannot fire it without telling anyone.
2. One Notification per fired context (or, with grouping, one per stakeholder's set of
   contexts), one Delivery per stakeholder through the outbox.
3. Layer 2 — each delivery goes now when the person's cadence allows, else at the earliest
   moment it does (`send_at = not_before`), with the rule that held it as its reason.

Domain apps register their evaluators here from AppConfig.ready(); the engine never
imports them. Every query here is per tick or per workflow, never per kiosk or per person.
"""

import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Q, Value, When

from cadence.models import Stakeholder, TriggerCooldown
from cadence.policy import Sent, decide
from cadence.validators import MAX_HOURS
from notifications.bulk import insert_rows
from notifications.cadence_checks import TOLD_STATUSES, stakeholder_histories, stakeholder_id
from notifications.models import (
    HAS_CONTEXT,
    HIGH_RISK_LEVEL,
    Delivery,
    Notification,
    Workflow,
    WorkflowRun,
)
from notifications.outbox import Recipient, stage_deliveries

logger = logging.getLogger(__name__)

GROUP_PREFIX = "group:"
RESOLVED_PREFIX = "resolved:"
# What every message of one context sees besides its event's own variables, and what a
# grouped message sees (each item: one context's variables and its event).
COMMON_VARIABLES = ("summary", "context_key", "stakeholder_name")
GROUPED_VARIABLES = ("count", "summaries", "items", "context_keys", "stakeholder_name")


@dataclass(frozen=True)
class TriggerContext:
    """One thing an evaluator found, identified by its context key."""

    event: str
    context_key: str
    summary: str  # one line, e.g. "K-12 at Hudson Yards: LOW_BATTERY, NOT_CHARGING"
    variables: Mapping[str, Any] = field(default_factory=dict)
    issues: tuple[str, ...] = ()  # names per-issue cooldowns refer to
    project_id: int | None = None
    kiosk_id: int | None = None
    # Project-driven recipients: the stakeholders assigned to what the context is about.
    stakeholder_ids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Evaluator:
    name: str
    find: Callable[[datetime], Iterable[TriggerContext]]
    # cleared(context_keys, now) -> the keys whose condition no longer holds (None: never
    # known to clear, so no recovery cancel and no resolved notice).
    cleared: Callable[[Collection[str], datetime], set[str]] | None = None
    label: str = ""
    variables: tuple[str, ...] = ()
    issues: tuple[str, ...] = ()

    @property
    def template_variables(self) -> tuple[str, ...]:
        """What a template of this event (or its resolved notice) may use."""
        return (*self.variables, *COMMON_VARIABLES)


_evaluators: dict[str, Evaluator] = {}


def register_evaluator(
    name: str,
    find: Callable[[datetime], Iterable[TriggerContext]],
    *,
    cleared: Callable[[Collection[str], datetime], set[str]] | None = None,
    label: str = "",
    variables: Iterable[str] = (),
    issues: Iterable[str] = (),
) -> None:
    """Make a trigger event available to trigger workflows. Context keys must start with
    `<name>:` (that is how a delivery's context finds its evaluator again)."""
    _evaluators[name] = Evaluator(
        name, find, cleared, label or name, tuple(variables), tuple(issues)
    )


def evaluator_for(name: str) -> Evaluator | None:
    return _evaluators.get(name)


def registered_evaluators() -> list[Evaluator]:
    return sorted(_evaluators.values(), key=lambda e: e.name)


def event_of(context_key: str) -> str:
    return context_key.split(":", 1)[0]


def cleared_contexts(context_keys: Collection[str], *, now: datetime) -> set[str]:
    """Which of these context keys have cleared: one call per event, not per key."""
    by_event = defaultdict(list)
    for key in context_keys:
        by_event[event_of(key)].append(key)
    cleared: set[str] = set()
    for event, keys in by_event.items():
        evaluator = _evaluators.get(event)
        if evaluator is not None and evaluator.cleared is not None:
            cleared |= set(evaluator.cleared(keys, now))
    return cleared


# --- the tick -------------------------------------------------------------------------------


@dataclass
class TickReport:
    workflows: int = 0
    contexts_found: int = 0
    contexts_fired: int = 0
    contexts_skipped_cooldown: int = 0
    contexts_not_watched: int = 0  # the workflow's event watches none of the context's issues
    contexts_without_audience: int = 0
    notifications: int = 0
    deliveries_now: int = 0
    deliveries_queued: int = 0
    deliveries_expired: int = 0
    recipients_without_address: int = 0
    resolved_notices: int = 0
    failed_workflows: int = 0  # raised: rolled back, counted nowhere else, tried next tick
    workflows_refused_high_risk: int = 0  # risk 3 or more: not run (no approval step)
    # One row per workflow: its name and its own counts (PER_WORKFLOW), or failed/refused.
    by_workflow: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


# The counts a workflow adds to the tick's, also reported per workflow.
PER_WORKFLOW = (
    "contexts_fired",
    "contexts_skipped_cooldown",
    "contexts_not_watched",
    "contexts_without_audience",
    "deliveries_now",
    "deliveries_queued",
    "deliveries_expired",
    "recipients_without_address",
)


def tick_summary(report: dict) -> str:
    """A tick's counts in words, for the command and the admin. A context is found once and
    judged by each workflow whose event reports it: the other context counts are per
    workflow, so they may add up to more than were found."""
    return (
        f"{report['contexts_found']} context(s) found; over {report['workflows']} active "
        f"workflow(s), each counted per workflow: {report['contexts_fired']} fired, "
        f"{report['contexts_skipped_cooldown']} held by a cooldown, "
        f"{report['contexts_not_watched']} not watched, {report['contexts_without_audience']} "
        f"without anyone to tell. Deliveries: {report['deliveries_now']} now, "
        f"{report['deliveries_queued']} queued by cadence, {report['deliveries_expired']} "
        f"expired (held past the workflow's expiry on every channel)."
        + (
            f" {report['recipients_without_address']} recipient(s) not told: no address on a "
            f"channel the template can go by (WhatsApp needs a WhatsApp template name)."
            if report.get("recipients_without_address")
            else ""
        )
        + _by_workflow(report.get("by_workflow", []), report)
    )


def _by_workflow(rows: list[dict], report: dict) -> str:
    """Each workflow's line, when there is more than one (or one not run, or one failed)."""
    if len(rows) == 1 and not (report["failed_workflows"] or report["workflows_refused_high_risk"]):
        return ""
    return "".join(f" {_workflow_summary(row)}." for row in rows)


def _workflow_summary(row: dict) -> str:
    if row.get("failed"):
        return (
            f"{row['workflow']}: failed and rolled back (the next tick tries again; the log "
            "says why)"
        )
    if row.get("refused"):
        return f"{row['workflow']}: not run ({row['refused']})"
    return (
        f"{row['workflow']}: {row['contexts_fired']} fired, {row['contexts_skipped_cooldown']} "
        f"held by a cooldown, {row['contexts_not_watched']} not watched, "
        f"{row['contexts_without_audience']} without anyone to tell; deliveries "
        f"{row['deliveries_now']} now, {row['deliveries_queued']} queued, "
        f"{row['deliveries_expired']} expired"
        + (
            f", {row['recipients_without_address']} recipient(s) without an address"
            if row["recipients_without_address"]
            else ""
        )
    )


@dataclass
class Timeline:
    """Everyone's cadence history for this tick, from one query, plus what the tick adds.
    Additions of a workflow become visible to the next workflow only once committed."""

    history: dict[tuple[int, str], list[Sent]]
    pending: dict[tuple[int, str], list[Sent]] = field(default_factory=lambda: defaultdict(list))

    def of(self, stakeholder_id: int, channel: str) -> list[Sent]:
        key = (stakeholder_id, channel)
        return self.history.get(key, []) + self.pending.get(key, [])

    def add(self, stakeholder_id: int, channel: str, sent: Sent) -> None:
        self.pending[(stakeholder_id, channel)].append(sent)

    def commit(self) -> None:
        for key, items in self.pending.items():
            self.history.setdefault(key, []).extend(items)
        self.pending = defaultdict(list)

    def rollback(self) -> None:
        self.pending = defaultdict(list)


@dataclass
class _Message:
    """One Notification to stage: a template, its context, its context key, who hears."""

    event: str
    template: Any
    context: dict
    context_key: str
    origin: str
    stakeholder_ids: list[int]


def active_trigger_workflows() -> list[Workflow]:
    """The trigger workflows the tick runs: active, set up, and of risk below
    HIGH_RISK_LEVEL (the admin refuses more; one saved otherwise is not run and
    counted as `workflows_refused_high_risk`)."""
    return list(
        Workflow.objects.filter(
            type=Workflow.Type.TRIGGER,
            is_active=True,
            trigger_setup__isnull=False,
            risk_level__lt=HIGH_RISK_LEVEL,
        )
        .select_related("trigger_setup", "trigger_setup__grouped_template")
        .prefetch_related(
            "trigger_setup__audience_personas",
            "trigger_setup__audience_stakeholders",
            "trigger_events__template",
            "trigger_events__resolved_template",
        )
        .order_by("id")
    )


def workflow_key(workflow: Workflow) -> str:
    return f"workflow:{workflow.pk}"


def evaluate_triggers(*, now: datetime) -> dict:
    """Run every active trigger workflow once. Returns the counts (see TickReport)."""
    report = TickReport()
    workflows = active_trigger_workflows()
    report.workflows = len(workflows)
    refused = Workflow.objects.filter(
        type=Workflow.Type.TRIGGER,
        is_active=True,
        trigger_setup__isnull=False,
        risk_level__gte=HIGH_RISK_LEVEL,
    ).values_list("name", flat=True)
    for name in refused:
        report.workflows_refused_high_risk += 1
        report.by_workflow.append(
            {"workflow": name, "refused": f"risk {HIGH_RISK_LEVEL} or more: lower it to run"}
        )
        logger.warning(
            "trigger workflow %s not run: risk %d or more needs an approved proposed action "
            "for each side effect; lower its risk to run it",
            name,
            HIGH_RISK_LEVEL,
        )
    if not workflows:
        return report.as_dict()
    found = _run_evaluators(workflows, now=now)
    report.contexts_found = sum(len(c) for c in found.values())
    stakeholders = _load_audience(workflows, found)
    timeline = Timeline(stakeholder_histories(stakeholders.keys(), now=now))
    for workflow in workflows:
        counted = asdict(report)
        try:
            with transaction.atomic():
                _evaluate_workflow(workflow, found, stakeholders, timeline, now, report)
        except Exception:
            # One broken workflow (a template that no longer renders, ...) must not stop
            # the others; its claims rolled back with it, so the next tick tries again,
            # and so do its counts: the report says what was done.
            timeline.rollback()
            for name, value in counted.items():
                setattr(report, name, value)
            report.failed_workflows += 1
            report.by_workflow.append({"workflow": workflow.name, "failed": True})
            logger.exception("trigger workflow %s failed; the next tick retries", workflow)
        else:
            timeline.commit()
            report.by_workflow.append(
                {
                    "workflow": workflow.name,
                    **{name: getattr(report, name) - counted[name] for name in PER_WORKFLOW},
                }
            )
    return report.as_dict()


def _run_evaluators(workflows: list[Workflow], *, now: datetime) -> dict[str, list]:
    """Each event's contexts, found once per tick whatever the number of workflows."""
    names = {e.event for w in workflows for e in w.trigger_events.all()}
    found = {}
    for name in sorted(names):
        evaluator = _evaluators.get(name)
        if evaluator is None:
            logger.warning("no evaluator is registered for trigger event %r", name)
            continue
        found[name] = sorted(evaluator.find(now), key=lambda c: c.context_key)
    return found


def _load_audience(workflows, found) -> dict[int, Stakeholder]:
    persona_ids, stakeholder_ids = set(), set()
    for workflow in workflows:
        setup = workflow.trigger_setup
        persona_ids |= {p.pk for p in setup.audience_personas.all()}
        stakeholder_ids |= {s.pk for s in setup.audience_stakeholders.all()}
        if setup.include_project_stakeholders:
            for event in workflow.trigger_events.all():
                for context in found.get(event.event, ()):
                    stakeholder_ids |= context.stakeholder_ids
    if not persona_ids and not stakeholder_ids:
        return {}
    return {
        s.pk: s
        for s in Stakeholder.objects.filter(is_active=True)
        .filter(Q(persona_id__in=persona_ids) | Q(pk__in=stakeholder_ids))
        .select_related("persona")
    }


def _base_audience(workflow, stakeholders) -> set[int]:
    """The workflow's own audience: its personas' stakeholders and the ones it names."""
    setup = workflow.trigger_setup
    personas = {p.pk for p in setup.audience_personas.all()}
    named = {s.pk for s in setup.audience_stakeholders.all()}
    return {s.pk for s in stakeholders.values() if s.pk in named or s.persona_id in personas}


def _audience_of(workflow, context: TriggerContext, base: set[int], stakeholders) -> list:
    ids = set(base)
    if workflow.trigger_setup.include_project_stakeholders:
        ids |= {i for i in context.stakeholder_ids if i in stakeholders}
    return [stakeholders[i] for i in sorted(ids)]


def layer1_cooldown(setup, event, context: TriggerContext, audience) -> timedelta:
    """Per issue (shortest of the context's issues), else per event, else the workflow's,
    else the shortest cooldown of the audience's personas, else the default (1 h)."""
    per_issue = event.issue_cooldown_hours or {}
    issue_hours = [per_issue[i] for i in context.issues if i in per_issue]
    if issue_hours:
        hours = min(issue_hours)
    elif event.cooldown_hours is not None:
        hours = event.cooldown_hours
    elif setup.cooldown_hours is not None:
        hours = setup.cooldown_hours
    else:
        persona_hours = [
            s.persona.cooldown_hours for s in audience if s.persona and s.persona.cooldown_hours > 0
        ]
        hours = min(persona_hours) if persona_hours else settings.TRIGGER_DEFAULT_COOLDOWN_HOURS
    return timedelta(hours=min(hours, MAX_HOURS))  # a value stored before the form's bound


def claim_contexts(
    *, key: str, planned: list[tuple[TriggerContext, timedelta]], now: datetime
) -> set[str]:
    """Layer 1: claim the fire of each planned context whose cooldown has passed. Returns
    the context keys this caller won; a context another tick claimed first is not among
    them. Must run inside the transaction that stages the deliveries."""
    if not planned:
        return set()
    keys = [c.context_key for c, _ in planned]
    existing = dict(
        TriggerCooldown.objects.filter(workflow_key=key, context_key__in=keys).values_list(
            "context_key", "last_sent_at"
        )
    )
    token = uuid.uuid4()
    due_by_cutoff: dict[datetime, list[str]] = defaultdict(list)
    new = []
    for context, cooldown in planned:
        last = existing.get(context.context_key)
        if last is None:
            new.append(
                {
                    "workflow_key": key,
                    "context_key": context.context_key,
                    "event": context.event,
                    "last_sent_at": now,
                    "opened_at": now,
                    "claim_token": token,
                }
            )
        elif last <= now - cooldown:
            due_by_cutoff[now - cooldown].append(context.context_key)
    if not new and not due_by_cutoff:
        return set()
    for cutoff, due in due_by_cutoff.items():
        # The condition is re-checked by the database: of two ticks racing for one row,
        # only the first update matches.
        TriggerCooldown.objects.filter(
            workflow_key=key, context_key__in=due, last_sent_at__lte=cutoff
        ).update(
            last_sent_at=now,
            claim_token=token,
            fire_count=F("fire_count") + 1,
            opened_at=Case(When(cleared_at__isnull=False, then=Value(now)), default=F("opened_at")),
            cleared_at=None,
        )
    if new:
        # A row a concurrent tick inserted first is skipped, and so not claimed here. Rows
        # without model instances (bulk.insert_rows): 6,000 new contexts took bulk_create
        # most of the tick's time.
        insert_rows(TriggerCooldown, new, ignore_conflicts=True)
    return set(
        TriggerCooldown.objects.filter(workflow_key=key, claim_token=token).values_list(
            "context_key", flat=True
        )
    )


def _evaluate_workflow(workflow, found, stakeholders, timeline, now, report) -> None:
    setup = workflow.trigger_setup
    events = {e.event: e for e in workflow.trigger_events.all()}
    planned, audiences = [], {}
    base = _base_audience(workflow, stakeholders)
    # Contexts with the same issues and audience share their cooldown: worked out once.
    cooldowns: dict[tuple, timedelta] = {}
    for name, event in events.items():
        for context in found.get(name, ()):
            if not event.watches(context.issues):
                report.contexts_not_watched += 1
                continue
            audience = _audience_of(workflow, context, base, stakeholders)
            if not audience:
                report.contexts_without_audience += 1
                continue
            audiences[context.context_key] = audience
            key = (name, context.issues, tuple(s.pk for s in audience))
            if key not in cooldowns:
                cooldowns[key] = layer1_cooldown(setup, event, context, audience)
            planned.append((context, cooldowns[key]))
    fired = claim_contexts(key=workflow_key(workflow), planned=planned, now=now)
    report.contexts_skipped_cooldown += len(planned) - len(fired)
    report.contexts_fired += len(fired)
    fired_contexts = [c for c, _ in planned if c.context_key in fired]
    messages = _messages(workflow, events, fired_contexts, audiences)
    resolved = []
    if setup.send_resolved_notices:
        active = {c.context_key for c, _ in planned}
        resolved = _resolved_messages(workflow, events, active, stakeholders, timeline, now)
        report.resolved_notices += len(resolved)
    if not messages and not resolved:
        return
    run = WorkflowRun.objects.create(
        workflow=workflow,
        status=WorkflowRun.Status.COMPLETED,
        started_at=now,
        completed_at=now,
        summary={"contexts_fired": sorted(fired), "resolved": [m.context_key for m in resolved]},
    )
    _stage(workflow, run, messages + resolved, stakeholders, timeline, now, report)


def _origin(event: str, workflow: Workflow, what: str = "") -> str:
    return f"{event}{what} ({workflow.name})"[:200]


def _messages(workflow, events, fired: list[TriggerContext], audiences) -> list[_Message]:
    if not workflow.trigger_setup.group_contexts:
        return [
            _Message(
                event=c.event,
                template=events[c.event].template,
                context=_variables(c),
                context_key=c.context_key,
                origin=_origin(c.event, workflow),
                stakeholder_ids=[s.pk for s in audiences[c.context_key]],
            )
            for c in fired
        ]
    # Grouping: the contexts one stakeholder hears about in this tick become one message;
    # stakeholders who hear about the same set share that message.
    grouped_template = workflow.trigger_setup.grouped_template
    by_key = {c.context_key: c for c in fired}
    per_person: dict[int, list[str]] = defaultdict(list)
    for context in fired:
        for person in audiences[context.context_key]:
            per_person[person.pk].append(context.context_key)
    sets: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for person, keys in per_person.items():
        sets[tuple(sorted(keys))].append(person)
    if grouped_template is None and any(len(keys) > 1 for keys in sets):
        logger.warning("%s: grouping is on but there is no grouped template", workflow)
    messages = []
    singles: dict[str, list[int]] = defaultdict(list)
    for keys, people in sorted(sets.items()):
        if len(keys) == 1 or grouped_template is None:
            for key in keys:
                singles[key].extend(people)
            continue
        contexts = [by_key[k] for k in keys]
        items = [_variables(c) | {"event": c.event} for c in contexts]
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
        messages.append(
            _Message(
                event="group",
                template=grouped_template,
                context={
                    "count": len(contexts),
                    "summaries": [c.summary for c in contexts],
                    "items": items,
                    "context_keys": list(keys),
                },
                context_key=f"{GROUP_PREFIX}{len(keys)}:{digest}",
                origin=f"{len(keys)} contexts ({workflow.name})"[:200],
                stakeholder_ids=sorted(people),
            )
        )
    for key, people in sorted(singles.items()):
        context = by_key[key]
        messages.append(
            _Message(
                event=context.event,
                template=events[context.event].template,
                context=_variables(context),
                context_key=key,
                origin=_origin(context.event, workflow),
                stakeholder_ids=sorted(people),
            )
        )
    return messages


def _variables(context: TriggerContext) -> dict:
    return {**context.variables, "summary": context.summary, "context_key": context.context_key}


def _key_prefix(workflow: Workflow, context_key: str, now: datetime) -> str:
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    if len(context_key) > 100:
        context_key = hashlib.sha256(context_key.encode()).hexdigest()[:24]
    return f"trigger:{workflow.pk}:{context_key}@{stamp}"


def _stage(workflow, run, messages, stakeholders, timeline, now, report) -> None:
    """Notifications (one insert), then each one's deliveries through the outbox, then one
    update that moves every held delivery to its cadence time with its reason."""
    setup = workflow.trigger_setup
    message_type = setup.message_type
    notifications = Notification.objects.bulk_create(
        [
            Notification(
                template=m.template,
                context=m.context,
                origin=m.origin,
                message_type=message_type,
                workflow_run=run,
                created_at=now,
            )
            for m in messages
        ]
    )
    expires_at = (
        now + timedelta(hours=min(setup.expires_after_hours, MAX_HOURS))
        if setup.expires_after_hours is not None
        else None
    )
    held: dict[str, tuple[datetime, str, str]] = {}  # idempotency key -> (send_at, reason, status)
    for message, notification in zip(messages, notifications, strict=True):
        prefix = _key_prefix(workflow, message.context_key, now)
        recipients = []
        for person_id in message.stakeholder_ids:
            person = stakeholders[person_id]
            route = _route(setup, person, message.template)
            if route is None:
                report.recipients_without_address += 1
                logger.warning(
                    "stakeholder %s has no address on a channel the template %s can go by "
                    "(WhatsApp needs a WhatsApp template name) for %s",
                    person,
                    message.template,
                    message.origin,
                )
                continue
            channel, address, fallback_channel, fallback_address = route
            tz, key = person.tz, f"{prefix}:{person.recipient_key}"
            rules = person.rules()
            decision = decide(rules, timeline.of(person.pk, channel), message_type, now, tz)
            past_expiry = "" if decision.allowed else _past_expiry(decision, expires_at, tz)
            note = ""
            if past_expiry and fallback_channel:
                # Held on its channel until after it expires: its fallback channel, if the
                # person's cadence there lets it go in time (as the send-time check does).
                other = decide(
                    rules, timeline.of(person.pk, fallback_channel), message_type, now, tz
                )
                if other.allowed or not _past_expiry(other, expires_at, tz):
                    note = f"on its fallback channel: {channel} is held ({past_expiry})"
                    channel, address, decision = fallback_channel, fallback_address, other
                    fallback_channel = fallback_address = past_expiry = ""
                else:
                    past_expiry += f"; {fallback_channel} is held too ({other.label})"
            recipients.append(
                Recipient(
                    key=person.recipient_key,
                    address=address,
                    context={"stakeholder_name": person.name},
                    channel=channel,
                    fallback_channel=fallback_channel,
                    fallback_address=fallback_address,
                )
            )
            if decision.allowed:
                timeline.add(person.pk, channel, Sent(now, message_type))
                if note:
                    held[key] = (now, note, Delivery.Status.SCHEDULED)
                report.deliveries_now += 1
                continue
            if past_expiry:
                held[key] = (
                    decision.not_before,
                    f"expired: {past_expiry}",
                    Delivery.Status.EXPIRED,
                )
                report.deliveries_expired += 1
                continue
            timeline.add(person.pk, channel, Sent(decision.not_before, message_type))
            reason = decision.reason(tz) + (f"; {note}" if note else "")
            held[key] = (decision.not_before, reason, Delivery.Status.SCHEDULED)
            report.deliveries_queued += 1
        stage_deliveries(
            notification=notification,
            recipients=recipients,
            now=now,
            key_prefix=prefix,
            send_at=now,
            expires_at=expires_at,
            context_key=message.context_key,
        )
    report.notifications += len(notifications)
    if held:
        Delivery.objects.filter(idempotency_key__in=list(held)).update(
            send_at=Case(*[When(idempotency_key=k, then=Value(v[0])) for k, v in held.items()]),
            status_reason=Case(
                *[When(idempotency_key=k, then=Value(v[1][:300])) for k, v in held.items()]
            ),
            status=Case(*[When(idempotency_key=k, then=Value(v[2])) for k, v in held.items()]),
        )


def _past_expiry(decision, expires_at: datetime | None, tz) -> str:
    """Why a held message would wait until after it expires; "" when it would not."""
    if expires_at is None or decision.not_before < expires_at:
        return ""
    return f"{decision.reason(tz)}, after its expiry {expires_at.astimezone(tz):%Y-%m-%d %H:%M %Z}"


def _route(setup, person: Stakeholder, template) -> tuple[str, str, str, str] | None:
    """(channel, address, fallback channel, fallback address) for one person, or None. A
    channel the template cannot go by (WhatsApp without a WhatsApp template name) counts as
    one the person has no address on: the fallback carries the message, if it can."""

    def address_on(channel: str) -> str:
        return person.address_for(channel) if channel and template.carries(channel) else ""

    channel = setup.channel or person.preferred_channel
    fallback = setup.fallback_channel or person.fallback_channel
    address = address_on(channel)
    fallback_address = address_on(fallback) if fallback != channel else ""
    if not address:
        if not fallback_address:
            return None
        return fallback, fallback_address, "", ""
    if not fallback_address:
        return channel, address, "", ""
    return channel, address, fallback, fallback_address


# --- resolved notices -------------------------------------------------------------------------


def _resolved_messages(
    workflow, events, active: set[str], stakeholders, timeline, now
) -> list[_Message]:
    """Contexts of this workflow that were open, are not reported now and have cleared:
    each is claimed once (cleared_at), and the people who were told get one notice."""
    key = workflow_key(workflow)
    open_keys = [
        k
        for k in TriggerCooldown.objects.filter(
            workflow_key=key, cleared_at__isnull=True
        ).values_list("context_key", flat=True)
        if k not in active and event_of(k) in events
    ]
    if not open_keys:
        return []
    cleared = cleared_contexts(open_keys, now=now)
    if not cleared:
        return []
    token = uuid.uuid4()
    TriggerCooldown.objects.filter(
        workflow_key=key, context_key__in=cleared, cleared_at__isnull=True
    ).update(cleared_at=now, claim_token=token)
    claimed = dict(
        TriggerCooldown.objects.filter(workflow_key=key, claim_token=token).values_list(
            "context_key", "opened_at"
        )
    )
    if not claimed:
        return []
    told = _told(workflow, claimed)
    missing = {p for people, _ in told.values() for p in people} - set(stakeholders)
    if missing:
        # People told earlier who are no longer in any audience still hear it is resolved.
        found = Stakeholder.objects.filter(pk__in=missing, is_active=True).select_related("persona")
        stakeholders.update({s.pk: s for s in found})
        timeline.history.update(stakeholder_histories(missing, now=now))
    messages = []
    for context_key, (people, variables) in sorted(told.items()):
        people = sorted(p for p in people if p in stakeholders)
        event = events[event_of(context_key)]
        if not people:
            continue
        if event.resolved_template is None:
            logger.warning("%s: no resolved template for %s", workflow, event.event)
            continue
        messages.append(
            _Message(
                event=event.event,
                template=event.resolved_template,
                context=variables,
                context_key=f"{RESOLVED_PREFIX}{context_key}",
                origin=_origin(event.event, workflow, " resolved"),
                stakeholder_ids=people,
            )
        )
    return messages


def _told(workflow, opened: dict[str, datetime]) -> dict[str, tuple[set[int], dict]]:
    """Who was really told about each context since it opened (sent, not just queued),
    and the variables they were told: {context key: (stakeholder ids, variables)}. Someone
    told by a fallback channel at send time counts too (the engine's fallback copy does not
    carry the context key: its original does)."""
    since = min(opened.values())
    told_rows = Delivery.objects.filter(
        workflow_run__workflow=workflow, status__in=TOLD_STATUSES, created_at__gte=since
    )
    fields = ("recipient_key", "context_key", "notification__context", "created_at")
    rows = told_rows.filter(
        Q(context_key__in=list(opened)) | Q(context_key__startswith=GROUP_PREFIX), HAS_CONTEXT
    ).values_list(*fields)
    by_fallback = told_rows.filter(
        Q(fallback_of__context_key__in=list(opened))
        | Q(fallback_of__context_key__startswith=GROUP_PREFIX),
        fallback_of__isnull=False,
    ).values_list("recipient_key", "fallback_of__context_key", *fields[2:])
    told: dict[str, tuple[set[int], dict]] = {}
    for recipient_key, context_key, context, created_at in [*rows, *by_fallback]:
        person = stakeholder_id(recipient_key)
        if person is None:
            continue
        if context_key.startswith(GROUP_PREFIX):
            pairs = [(i.get("context_key", ""), i) for i in (context or {}).get("items", [])]
        else:
            pairs = [(context_key, context or {})]
        for key, variables in pairs:
            if key in opened and created_at >= opened[key]:
                people, _ = told.setdefault(key, (set(), dict(variables)))
                people.add(person)
    return told
