"""The reminder schedule's activation gate (seed 002: "don't activate the flow until all
six rows show APPROVED"). The schedule (task herald.discover_reminders, created disabled by
setup_schedules) is enabled only when the gate holds, or by a staff member with the
override permission; every switch is audited (ScheduleChange)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django_celery_beat.models import PeriodicTask

from production_runs.discoverer import (
    KINDS,
    REMINDER_TZ,
    digest_event_name,
    discover_reminders,
    reminder_event_name,
)
from production_runs.dispatcher import DIGEST_EVENT, mapping_problem
from production_runs.models import (
    EventTemplateMapping,
    ReminderKind,
    ReminderSettings,
    ScheduleChange,
    TemplateStatus,
    TemplateVariantStatus,
    WhatsAppPlatform,
)
from production_runs.whatsapp_templates import DESIGN_TEMPLATE, SPECS, languages_for_platform

DISCOVER_TASK = "herald.discover_reminders"
OVERRIDE_PERMISSION = "production_runs.override_activation_gate"


class GateClosed(Exception):
    pass


@dataclass(frozen=True)
class GateCheck:
    label: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Gate:
    checks: list[GateCheck]

    @property
    def holds(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_list(self) -> list[dict]:
        return [asdict(check) for check in self.checks]


def schedule() -> PeriodicTask | None:
    return PeriodicTask.objects.filter(task=DISCOVER_TASK).select_related("crontab").first()


def reminder_events(settings: ReminderSettings) -> list[str]:
    namer = digest_event_name if settings.digest_enabled else reminder_event_name
    return [namer(kind) for kind in ReminderKind.values]


def required_templates(settings: ReminderSettings) -> list[str]:
    """The templates the scheduled reminders send: the live mappings of the reminder (or
    digest) events, plus the design-image template when a mapping of a run's reminder
    follows up with it (a digest never does, whatever its row says: the dispatcher sends no
    image after a digest)."""
    mappings = EventTemplateMapping.objects.filter(
        event_name__in=reminder_events(settings), is_live=True
    )
    names = {m.template_name for m in mappings}
    if any(m.send_design_image and not DIGEST_EVENT.match(m.event_name) for m in mappings):
        names.add(DESIGN_TEMPLATE)
    return sorted(names)


def activation_gate() -> Gate:
    settings = ReminderSettings.load()
    checks = []
    task = schedule()
    if task is None:
        checks.append(GateCheck("schedule exists", False, "run manage.py setup_schedules"))
    else:
        zone = str(task.crontab.timezone) if task.crontab else ""
        checks.append(
            GateCheck(
                "schedule runs in Asia/Kolkata",
                zone == str(REMINDER_TZ),
                f"{task.name}: crontab time zone {zone or 'none (interval)'}",
            )
        )
    mappings = {
        m.event_name: m
        for m in EventTemplateMapping.objects.filter(event_name__in=reminder_events(settings))
    }
    missing = [
        name
        for name in reminder_events(settings)
        if name not in mappings
        or not mappings[name].is_live
        or mappings[name].template_name not in SPECS
    ]
    # A live mapping to a template whose variables the event does not provide fails at
    # every send (the mapping form refuses it; a row from before that check may remain).
    unfit = [
        problem
        for name in reminder_events(settings)
        if name not in missing and (problem := mapping_problem(name, mappings[name].template_name))
    ]
    problems = []
    if missing:
        problems.append(f"no live mapping to a known template for {', '.join(missing)}")
    problems += [f"unusable mapping: {problem}" for problem in unfit]
    checks.append(
        GateCheck(
            "dispatcher mappings live",
            not problems,
            "; ".join(problems)
            if problems
            else ", ".join(f"{n} → {mappings[n].template_name}" for n in sorted(mappings)),
        )
    )
    platforms = list(WhatsAppPlatform.objects.filter(is_active=True))
    if not platforms:
        checks.append(GateCheck("WhatsApp platforms", False, "no active WhatsApp platform"))
    templates = required_templates(settings)
    statuses = {
        (row.platform_id, row.template_name, row.language): row.status
        for row in TemplateVariantStatus.objects.filter(platform__in=platforms)
    }
    for platform in platforms:
        try:
            languages = languages_for_platform(platform)
        except ImproperlyConfigured as error:
            checks.append(GateCheck(f"templates approved on {platform.label}", False, str(error)))
            continue
        pending = []
        total = 0
        for name in templates:
            usable = [language for language in languages if language in SPECS[name].bodies]
            if not usable:
                # Its languages (WHATSAPP_PLATFORM_LANGUAGES="AU=de") have no variant of a
                # template the reminders send: nothing could be approved, nothing sent.
                pending.append(f"{name}: no variant in {', '.join(languages)}")
            for language in usable:
                total += 1
                status = statuses.get((platform.id, name, language), TemplateStatus.MISSING)
                if status != TemplateStatus.APPROVED:
                    pending.append(f"{name} ({language}): {status}")
        checks.append(
            GateCheck(
                f"templates approved on {platform.label}",
                not pending,
                "; ".join(pending) if pending else f"{total} variants APPROVED",
            )
        )
    return Gate(checks)


@dataclass(frozen=True)
class Outlook:
    """What the discoverer would do if it ran now, and why the stalled runs it would not
    remind are left alone: reminded already today, waiting for a later escalation day, or
    their partner has no WhatsApp number."""

    counts: dict[str, int]  # stalled runs by bucket
    reminded_today: int
    waiting: int
    due: int  # runs it would remind
    events: int  # events it would emit (fewer than `due` with the digest on)
    no_whatsapp_number: int = 0  # due, but their partner has no WhatsApp number

    @property
    def stalled(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        unreachable = (
            f", {self.no_whatsapp_number} cannot be reminded (partner without a WhatsApp number)"
            if self.no_whatsapp_number
            else ""
        )
        return (
            f"{self.stalled} stalled run(s) right now; {self.reminded_today} already reminded "
            f"today, {self.waiting} waiting for a later escalation day{unreachable}, "
            f"{self.due} due"
        )


def reminder_outlook(*, now: datetime) -> Outlook:
    """The discoverer's dry run at `now`, with its "not due" runs split: a run reminded today
    is not reminded again today, one reminded earlier waits for its next escalation day."""
    summary = discover_reminders(now=now, dry_run=True)
    return Outlook(
        counts={kind: summary["counts"][kind] for kind in KINDS},
        reminded_today=summary["already_emitted"],
        waiting=summary["skipped_not_due"],
        due=summary["dispatched"],
        events=summary["events"],
        no_whatsapp_number=summary["skipped_no_whatsapp_number"],
    )


def schedule_enable(
    *, by: str, now: datetime, may_override: bool = False, reason: str = ""
) -> ScheduleChange:
    """Enable the schedule when the gate holds; otherwise only as an override by someone
    allowed to, with a reason. Raises GateClosed (and changes nothing) when refused."""
    gate = activation_gate()
    task = schedule()
    if task is None:
        raise GateClosed("the reminder schedule does not exist: run manage.py setup_schedules")
    overridden = not gate.holds
    if overridden:
        if not may_override:
            failing = "; ".join(f"{c.label}: {c.detail}" for c in gate.checks if not c.ok)
            raise GateClosed(f"the activation gate does not hold ({failing})")
        if not reason.strip():
            raise GateClosed("an override needs a reason")
    with transaction.atomic():
        task.enabled = True
        task.save()  # save(), not update(): beat notices changed schedules through it
        return ScheduleChange.objects.create(
            at=now,
            by=by,
            enabled=True,
            gate_held=gate.holds,
            overridden=overridden,
            reason=reason.strip()[:300],
            gate=gate.as_list(),
        )


def schedule_disable(*, by: str, now: datetime, reason: str = "") -> ScheduleChange | None:
    """Seed 002's rollback step 1: stop the schedule; no deploy needed."""
    task = schedule()
    if task is None or not task.enabled:
        return None
    with transaction.atomic():
        task.enabled = False
        task.save()
        return ScheduleChange.objects.create(
            at=now,
            by=by,
            enabled=False,
            gate_held=activation_gate().holds,
            reason=reason.strip()[:300],
        )
