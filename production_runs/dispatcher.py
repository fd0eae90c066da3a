"""The wildcard WhatsApp dispatcher for production runs (seed 002's "Partner WhatsApp —
Production Run (all events)"): one subscriber for `production_run.*`.

    read run, partner, design
    resolve the template from the event → template map   (no live mapping: logged skip
                                                           no_template_for_event, no message)
    resolve the language                                  (language.py)
    dedup on the context for the dedup window             (a skipped marker row, no send)
    stage the template message                            (the outbox sends it)
    stage the design image with the raw run id and the signed 24-hour portal link

Reminders use the per-day context production_run:<run>:reminder:<YYYY-MM-DD>, so a same-day
retry dedups and the next day's reminder goes out. At send time three checks re-decide each
message (registered with the engine in apps.py): a reminder whose run has moved on is
cancelled with that reason, a template variant that is not APPROVED on the sending
platform holds the message back, and a design image waits for the message it follows (and
is cancelled with it).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, time, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from notifications.dispatch import SendDecision
from notifications.models import (
    HAS_CONTEXT,
    Channel,
    Delivery,
    DeliveryEvent,
    Event,
    MessageTemplate,
    MessageType,
    Notification,
)
from notifications.outbox import Recipient, stage_deliveries
from production_runs.deeplink import make_token
from production_runs.discoverer import (
    REMINDER_TZ,
    digest_key,
    local_date,
    reminder_key,
    stall,
    take_back_reminders,
    with_last_progress,
)
from production_runs.language import resolve_language
from production_runs.models import (
    EventTemplateMapping,
    Partner,
    ProductionRun,
    ReminderKind,
    ReminderSettings,
    RunStatus,
    TemplateStatus,
    TemplateVariantStatus,
    WhatsAppPlatform,
)
from production_runs.whatsapp_templates import (
    DESIGN_TEMPLATE,
    IN_REVIEW,
    SPECS,
    WAITING_FOR_APPROVAL,
    TemplateSpec,
    django_body,
    languages_for_platform,
    variant_state,
)

logger = logging.getLogger(__name__)

# The map a fresh install starts with (migration 0002 writes it; the admin can restore it).
# event -> (template, follow with the design image and portal link)
DEFAULT_TEMPLATE_MAP: dict[str, tuple[str, bool]] = {
    "production_run.sent_to_partner": ("jyt_production_run_assigned_v1", True),
    "production_run.cancelled": ("jyt_production_run_cancelled_v1", False),
    "production_run.completed": ("jyt_production_run_completed_v1", False),
    "production_run.reminder_assignment_pending": ("jyt_production_run_reminder_pending_v1", True),
    "production_run.reminder_not_started": ("jyt_production_run_reminder_not_started_v1", True),
    "production_run.reminder_idle": ("jyt_production_run_reminder_idle_v1", True),
    "production_run.digest_assignment_pending": ("jyt_production_run_digest_pending_v1", False),
    "production_run.digest_not_started": ("jyt_production_run_digest_not_started_v1", False),
    "production_run.digest_idle": ("jyt_production_run_digest_idle_v1", False),
}

REMINDER_EVENT = re.compile(r"^production_run\.reminder_(?P<kind>\w+)$")
DIGEST_EVENT = re.compile(r"^production_run\.digest_(?P<kind>\w+)$")
REMINDER_CONTEXT = re.compile(r"^production_run:(?P<run>\d+):reminder:")
# A design image's key, and so the key of the message it follows (the same without :design).
DESIGN_KEY = re.compile(r"^(?P<event>production_run_event:\d+):design:(?P<recipient>.+)$")
DIGEST_CONTEXT = re.compile(r"^production_run_digest:")
# Deliveries still on their way count for dedup; skipped, cancelled and failed ones do not.
LIVE_STATUSES = (
    Delivery.Status.SCHEDULED,
    Delivery.Status.SENDING,
    Delivery.Status.SENT,
    Delivery.Status.DELIVERED,
    Delivery.Status.OPENED,
    Delivery.Status.CLICKED,
    Delivery.Status.UNKNOWN,
)
# A message whose template is still in review is looked at again after this.
TEMPLATE_REVIEW_RETRY = timedelta(minutes=30)
# A design image whose message is being sent by another worker is looked at again after this.
FOLLOW_RETRY = timedelta(minutes=1)
# A message in one of these has gone to the provider: the design image after it may follow.
GONE_OUT = (
    Delivery.Status.SENT,
    Delivery.Status.DELIVERED,
    Delivery.Status.OPENED,
    Delivery.Status.CLICKED,
    Delivery.Status.UNKNOWN,
)
RUN_LIST_LIMIT = 900  # characters; Meta allows 1024 per parameter


def restore_default_mappings() -> int:
    """Create the missing default mappings (existing rows are left as staff set them)."""
    created = 0
    for event_name, (template, image) in DEFAULT_TEMPLATE_MAP.items():
        _, new = EventTemplateMapping.objects.get_or_create(
            event_name=event_name,
            defaults={"template_name": template, "send_design_image": image},
        )
        created += int(new)
    return created


def live_mapping(event_name: str) -> EventTemplateMapping | None:
    return EventTemplateMapping.objects.filter(event_name=event_name, is_live=True).first()


def whole_days(start: datetime | None, end: datetime) -> int:
    """Days as the message says them: whole days, rounded down ("2 day(s) ago")."""
    if start is None:
        return 0
    return max(0, (end - start) // timedelta(days=1))


# What the dispatcher fills a template with, by the event: `template_variables` for an event
# about one run, the digest's three for a digest. A template needing anything else cannot be
# sent for that event (`mapping_problem`): the mapping form and the activation gate refuse it.
RUN_VARIABLES = (
    "partner_name",
    "design_name",
    "run_id",
    "days_since_assignment",
    "days_since_acceptance",
    "days_since_start",
    "produced_quantity",
    "quantity",
)
DIGEST_VARIABLES = ("partner_name", "run_count", "run_list")


class TemplateNeedsMissingVariables(ValueError):
    """A mapped template needs variables its event does not provide (a mapping saved before
    the form checked it): nothing is staged, and the handling's error says what is missing."""


def event_variables(event_name: str) -> tuple[str, ...]:
    """The variables the dispatcher provides for a template sent for `event_name`."""
    return DIGEST_VARIABLES if DIGEST_EVENT.match(event_name) else RUN_VARIABLES


def mapping_problem(event_name: str, template_name: str) -> str:
    """Why the template cannot be sent for the event ("" if it can): the variables its body
    needs that the event's dispatch does not provide. An unknown template is not judged here
    (the mapping's own check names it)."""
    spec = SPECS.get(template_name)
    if spec is None:
        return ""
    provided = event_variables(event_name)
    missing = [name for name in spec.variables if name not in provided]
    if not missing:
        return ""
    kind = "digest" if DIGEST_EVENT.match(event_name) else "run"
    return (
        f"{template_name} needs {', '.join(missing)}, which {event_name} does not provide "
        f"(a {kind} event fills {', '.join(provided)})"
    )


def template_variables(*, run: ProductionRun, partner: Partner, at: datetime) -> dict:
    """RUN_VARIABLES for one run (keep the two in step)."""
    design = run.design
    return {
        "partner_name": partner.name,
        "design_name": design.name if design else "—",
        "run_id": str(run.id),  # the raw id, never the per-day context id
        "days_since_assignment": whole_days(run.created_at, at),
        "days_since_acceptance": whole_days(run.accepted_at, at),
        "days_since_start": whole_days(run.started_at, at),
        "produced_quantity": run.produced_quantity,
        "quantity": run.quantity,
    }


def ensure_message_template(spec: TemplateSpec, language: str) -> MessageTemplate:
    """The engine's MessageTemplate for one variant (the outbox renders its body as the
    delivery's text), kept in step with the canonical spec."""
    fields = {
        "body": django_body(spec, language),
        "variables": list(spec.variables),
        "whatsapp_template": spec.name,
        "message_type": MessageType.CUSTOM,
        "sample_context": dict(zip(spec.variables, spec.examples[language], strict=True)),
    }
    template, created = MessageTemplate.objects.get_or_create(
        name=f"{spec.name} [{language}]", channel=Channel.WHATSAPP, defaults=fields
    )
    if not created and any(getattr(template, k) != v for k, v in fields.items()):
        for key, value in fields.items():
            setattr(template, key, value)
        template.save()
    return template


def _language(spec: TemplateSpec, partner: Partner, explicit: str) -> str:
    available = list(spec.languages)
    if partner.platform is not None:
        available = [lang for lang in languages_for_platform(partner.platform) if lang in available]
    return resolve_language(
        explicit=explicit,
        saved=partner.language,
        phone=partner.whatsapp_number,
        available=available or list(spec.languages),
    )


def _end_of_local_day(day) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=REMINDER_TZ)


def _skip(event: Event, skipped: str, **extra) -> dict:
    detail = f" ({extra})" if extra else ""
    logger.info(
        "production-run event %s (%s): skipped, %s%s", event.id, event.name, skipped, detail
    )
    return {"skipped": skipped, "event": event.name, **extra}


def handle_production_run_event(event: Event) -> dict:
    """The subscriber (registered in apps.py): a door onto dispatch_production_run_event."""
    return dispatch_production_run_event(event=event, now=timezone.now())


def dispatch_production_run_event(*, event: Event, now: datetime) -> dict:
    mapping = live_mapping(event.name)
    if mapping is None:
        return _skip(event, "no_template_for_event")
    spec = SPECS.get(mapping.template_name)
    if spec is None:
        return _skip(event, "unknown_template", template=mapping.template_name)
    problem = mapping_problem(event.name, spec.name)
    if problem:
        # Raised, not skipped: the handling fails with this error (and is retried, so a
        # mapping corrected meanwhile still sends); nothing is staged.
        raise TemplateNeedsMissingVariables(
            f"event {event.id}: the mapping of {event.name} is unusable: {problem}"
        )
    if DIGEST_EVENT.match(event.name):
        return _dispatch_digest(event, spec, now=now)
    payload = event.payload or {}
    run = (
        with_last_progress(ProductionRun.objects.select_related("partner__platform", "design"))
        .filter(pk=payload.get("production_run_id"))
        .first()
    )
    if run is None:
        return _skip(event, "run_not_found")
    partner = run.partner
    if partner is None:
        return _skip(event, "no_partner")
    reminder = REMINDER_EVENT.match(event.name)
    if not partner.whatsapp_number:
        if reminder:
            take_back_reminders([run.id], at=event.created_at)
        return _skip(event, "no_whatsapp_number", partner=partner.id)

    if reminder:
        # Handled later than emitted (a retry, a backlog): a run that moved since is not
        # reminded at all.
        reason = moved_on(
            run,
            kind=reminder["kind"],
            partner_id=payload.get("partner_id"),
            since=event.created_at.isoformat(),
        )
        if reason:
            return _skip(event, "run_moved_on", reason=reason)
    day = local_date(event.created_at)
    if reminder:
        context_key = reminder_key(run.id, day)
    else:
        context_key = f"production_run:{run.id}:{event.name.split('.', 1)[1]}"
    language = _language(spec, partner, payload.get("language", ""))
    variables = template_variables(run=run, partner=partner, at=event.created_at)
    context = {"production_run_id": run.id, "partner_id": partner.id, "event": event.name}
    if reminder:
        context["reminder_kind"] = reminder["kind"]
        context["stalled_since"] = _anchor(run)
    prefix = f"production_run_event:{event.id}"
    return _stage_for_partner(
        event=event,
        spec=spec,
        language=language,
        partner=partner,
        variables=variables,
        context=context,
        context_key=context_key,
        prefix=prefix,
        now=now,
        expires_at=_end_of_local_day(day) if reminder else None,
        design_image=(run if mapping.send_design_image else None),
    )


def _anchor(run: ProductionRun) -> str | None:
    """The time the run's stall is measured from, kept with the message so the send-time
    check can tell whether the run moved since."""
    found = stall(run)
    return found[1].isoformat() if found else None


def _dispatch_digest(event: Event, spec: TemplateSpec, *, now: datetime) -> dict:
    payload = event.payload or {}
    partner = (
        Partner.objects.select_related("platform").filter(pk=payload.get("partner_id")).first()
    )
    if partner is None:
        return _skip(event, "no_partner")
    if not partner.whatsapp_number:
        take_back_reminders(payload.get("production_run_ids", []), at=event.created_at)
        return _skip(event, "no_whatsapp_number", partner=partner.id)
    runs = list(
        with_last_progress(ProductionRun.objects.all())
        .filter(pk__in=payload.get("production_run_ids", []), partner=partner)
        .select_related("design")
        .order_by("id")
    )
    kind = payload.get("reminder_kind", "")
    since = event.created_at.isoformat()
    runs = [r for r in runs if not moved_on(r, kind=kind, partner_id=partner.id, since=since)]
    if not runs:
        return _skip(event, "run_moved_on", reason="every run in the digest moved on")
    listed = ", ".join(f"{r.id} ({r.design.name if r.design else '—'})" for r in runs)
    if len(listed) > RUN_LIST_LIMIT:
        listed = listed[: RUN_LIST_LIMIT - 20].rsplit(", ", 1)[0] + ", and more"
    day = local_date(event.created_at)
    return _stage_for_partner(
        event=event,
        spec=spec,
        language=_language(spec, partner, payload.get("language", "")),
        partner=partner,
        variables={"partner_name": partner.name, "run_count": len(runs), "run_list": listed},
        context={
            "partner_id": partner.id,
            "event": event.name,
            "reminder_kind": kind,
            "production_run_ids": [r.id for r in runs],
            "stalled_since": {str(r.id): _anchor(r) for r in runs},
        },
        context_key=digest_key(partner.id, kind, day),
        prefix=f"production_run_event:{event.id}",
        now=now,
        expires_at=_end_of_local_day(day),
        design_image=None,
    )


def _payload(spec: TemplateSpec, language: str, partner: Partner, variables: dict) -> dict:
    # The variables are there: dispatch_production_run_event refused a mapping whose
    # template needs others (mapping_problem), and RUN_VARIABLES is what
    # template_variables fills (a test holds the two together).
    return {
        "template": spec.name,
        "language": language,
        "parameters": [str(variables[name]) for name in spec.variables],
        "phone_number_id": partner.platform.phone_number_id if partner.platform else "",
    }


def recently_sent(context_key: str, *, now: datetime, exclude_prefix: str) -> Delivery | None:
    window = timedelta(minutes=ReminderSettings.load().dedup_window_minutes)
    return (
        Delivery.objects.filter(
            HAS_CONTEXT,
            context_key=context_key,
            created_at__gte=now - window,
            status__in=LIVE_STATUSES,
        )
        .exclude(idempotency_key__startswith=exclude_prefix + ":")
        .order_by("created_at", "id")
        .first()
    )


def _stage_for_partner(
    *,
    event: Event,
    spec: TemplateSpec,
    language: str,
    partner: Partner,
    variables: dict,
    context: dict,
    context_key: str,
    prefix: str,
    now: datetime,
    expires_at: datetime | None,
    design_image: ProductionRun | None,
) -> dict:
    recipient = Recipient(
        key=f"partner:{partner.id}",
        address=partner.whatsapp_number,
        context=variables,
        channel=Channel.WHATSAPP,
    )
    main_key = f"{prefix}:{recipient.key}"
    existing = Delivery.objects.filter(idempotency_key=main_key).first()
    if existing is not None:
        # The handling ran to the end before but was not recorded as done (worker killed):
        # everything it staged is there, in one transaction.
        return {"already_staged": existing.id, "context_key": context_key}
    result = {"template": spec.name, "language": language, "context_key": context_key}
    with transaction.atomic():
        # One partner's messages are decided one at a time (a row lock on PostgreSQL), so
        # two events about the same context cannot both pass the dedup check.
        list(Partner.objects.select_for_update().filter(pk=partner.pk).values_list("pk"))
        earlier = recently_sent(context_key, now=now, exclude_prefix=prefix)
        notification = Notification.objects.create(
            template=ensure_message_template(spec, language),
            context=context,
            origin=f"{event.name}:event:{event.id}",
            message_type=MessageType.CUSTOM,
            created_at=now,
        )
        stage_deliveries(
            notification=notification,
            recipients=[recipient],
            now=now,
            key_prefix=prefix,
            payload=_payload(spec, language, partner, variables),
            expires_at=expires_at,
            context_key=context_key,
            unsubscribe=False,
        )
        main = Delivery.objects.get(idempotency_key=main_key)
        result["delivery"] = main.id
        if earlier is not None:
            result["deduplicated"] = earlier.id
            _mark_dedup(main, earlier=earlier, context_key=context_key, now=now)
            return result
        if design_image is not None:
            result["design_image"] = _stage_design_image(
                event=event,
                run=design_image,
                partner=partner,
                language=language,
                context=context,
                context_key=context_key,
                prefix=f"{prefix}:design",
                now=now,
                expires_at=expires_at,
            )
    return result


def _mark_dedup(main: Delivery, *, earlier: Delivery, context_key: str, now: datetime) -> None:
    """The dedup marker: the row stays (what would have been sent, and why not), skipped
    before any provider sees it."""
    minutes = ReminderSettings.load().dedup_window_minutes
    # The key's date is a day in the schedule's zone: the time is given in that zone too,
    # and in UTC (logs, the database), each labelled.
    sent = earlier.created_at
    reason = (
        f"dedup: {context_key} already sent at {sent.astimezone(REMINDER_TZ):%Y-%m-%d %H:%M} "
        f"{REMINDER_TZ.key} ({sent.astimezone(UTC):%Y-%m-%d %H:%M} UTC) "
        f"(delivery {earlier.id}); not sent again within {minutes} minutes"
    )[:300]
    if Delivery.objects.filter(id=main.id, status=Delivery.Status.SCHEDULED).update(
        status=Delivery.Status.SKIPPED, status_reason=reason, updated_at=now
    ):
        DeliveryEvent.objects.create(delivery=main, kind="skipped", at=now, reason=reason)
    logger.info("delivery %s: %s", main.id, reason)


def _stage_design_image(
    *, event, run, partner, language, context, context_key, prefix, now, expires_at
) -> str | int:
    """The design image, the raw run id in its caption, and the signed portal link."""
    design = run.design
    if design is None or not design.image_url:
        return "no design image"
    spec = SPECS[DESIGN_TEMPLATE]
    if language not in spec.languages:
        language = "en"
    variables = {"run_id": str(run.id), "design_name": design.name}
    payload = {
        **_payload(spec, language, partner, variables),
        "header_image": design.image_url,
        "button_url_suffix": make_token(run_id=run.id, partner_id=partner.id),
    }
    notification = Notification.objects.create(
        template=ensure_message_template(spec, language),
        context=context,
        origin=f"{event.name}:event:{event.id}:design",
        message_type=MessageType.CUSTOM,
        created_at=now,
    )
    recipient = Recipient(
        key=f"partner:{partner.id}",
        address=partner.whatsapp_number,
        context=variables,
        channel=Channel.WHATSAPP,
    )
    stage_deliveries(
        notification=notification,
        recipients=[recipient],
        now=now,
        key_prefix=prefix,
        payload=payload,
        expires_at=expires_at,
        context_key=context_key,
        unsubscribe=False,
    )
    return Delivery.objects.get(idempotency_key=f"{prefix}:{recipient.key}").id


# --- send-time checks (registered with notifications.dispatch in apps.py) -----------------


def _ours(deliveries) -> list[Delivery]:
    return [
        d
        for d in deliveries
        if d.channel == Channel.WHATSAPP and d.context_key.startswith("production_run")
    ]


def moved_on(run: ProductionRun | None, *, kind: str, partner_id, since: str | None) -> str:
    """Why a reminder of `kind` about this run no longer applies ("" if it still does).
    `since` is the stall's anchor when the reminder was staged (ISO 8601)."""
    if run is None:
        return "run moved on: deleted"
    if run.status in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.DRAFT):
        return f"run moved on: {run.get_status_display().lower()}"
    if partner_id and run.partner_id != partner_id:
        return "run moved on: reassigned to another partner"
    if kind == ReminderKind.ASSIGNMENT_PENDING and (run.accepted_at or run.started_at):
        return "run moved on: accepted"
    if kind == ReminderKind.NOT_STARTED and run.started_at:
        return "run moved on: started"
    if kind == ReminderKind.IDLE and run.last_progress_at:
        anchor = datetime.fromisoformat(since) if since else None
        if anchor is None or run.last_progress_at > anchor:
            return "run moved on: progressed"
    return ""


def still_stalled_check(deliveries, now: datetime) -> dict[int, SendDecision]:
    """Cancel reminders (and digests) whose runs have all moved on since they were staged."""
    reminders = [
        d
        for d in _ours(deliveries)
        if REMINDER_CONTEXT.match(d.context_key) or DIGEST_CONTEXT.match(d.context_key)
    ]
    if not reminders:
        return {}
    contexts = dict(
        Notification.objects.filter(id__in={d.notification_id for d in reminders}).values_list(
            "id", "context"
        )
    )
    run_ids: set[int] = set()
    for context in contexts.values():
        run_ids.update(context.get("production_run_ids") or [context.get("production_run_id")])
    runs = {r.id: r for r in with_last_progress(ProductionRun.objects.filter(id__in=run_ids))}
    decisions = {}
    for delivery in reminders:
        context = contexts.get(delivery.notification_id) or {}
        kind, partner_id = context.get("reminder_kind", ""), context.get("partner_id")
        if "production_run_ids" in context:  # a digest: cancelled when none is still stalled
            anchors = context.get("stalled_since") or {}
            reasons = [
                moved_on(runs.get(i), kind=kind, partner_id=partner_id, since=anchors.get(str(i)))
                for i in context["production_run_ids"]
            ]
            if reasons and all(reasons):
                decisions[delivery.id] = SendDecision(
                    "cancel", f"every run in the digest moved on ({reasons[0]}, ...)"
                )
            continue
        run = runs.get(context.get("production_run_id"))
        reason = moved_on(run, kind=kind, partner_id=partner_id, since=context.get("stalled_since"))
        if reason:
            decisions[delivery.id] = SendDecision("cancel", reason)
    return decisions


def template_approved_check(deliveries, now: datetime) -> dict[int, SendDecision]:
    """Hold back a message whose template variant is not APPROVED on its platform: wait
    while Meta reviews (PENDING, PAUSED), cancel when it never will be sendable. A held
    message is due again once the variant's status changes (whatsapp_templates.release_held)
    or, at the latest, after TEMPLATE_REVIEW_RETRY."""
    ours = [d for d in _ours(deliveries) if d.payload.get("template")]
    if not ours:
        return {}

    def phone_id(delivery):
        return delivery.payload.get("phone_number_id") or settings.WHATSAPP_PHONE_NUMBER_ID

    platforms = {
        p.phone_number_id: p
        for p in WhatsAppPlatform.objects.filter(phone_number_id__in={phone_id(d) for d in ours})
    }
    if not platforms:
        return {}
    statuses = {
        (row.platform_id, row.template_name, row.language): row.status
        for row in TemplateVariantStatus.objects.filter(platform__in=platforms.values())
    }
    decisions = {}
    for delivery in ours:
        platform = platforms.get(phone_id(delivery))
        if platform is None:
            continue  # a number Herald has no platform for: nothing recorded to check
        template = delivery.payload["template"]
        language = delivery.payload.get("language") or "en"
        status = statuses.get((platform.id, template, language), TemplateStatus.MISSING)
        if status == TemplateStatus.APPROVED:
            continue
        what = variant_state(template, language, status, platform)
        if status in IN_REVIEW:
            # Looked at again after the retry, or as soon as Meta's status webhook (or a
            # refresh) records a new status (whatsapp_templates.release_held).
            decisions[delivery.id] = SendDecision(
                "defer", f"{what}: {WAITING_FOR_APPROVAL}", until=now + TEMPLATE_REVIEW_RETRY
            )
        else:
            decisions[delivery.id] = SendDecision("cancel", f"{what}: not sent")
    return decisions


def follows_its_message_check(deliveries, now: datetime) -> dict[int, SendDecision]:
    """A design image follows its template message (seed 002: "one template WhatsApp
    followed by the design image"): it waits while that message waits (held while its
    template is in review, paced, retried) and is cancelled when that message will not be
    sent (its template rejected, its run moved on, failed). Registered after the other
    checks, so a message they put back this round is no longer among `deliveries`."""
    images = {}
    for delivery in _ours(deliveries):
        if found := DESIGN_KEY.match(delivery.idempotency_key):
            images[delivery.id] = f"{found['event']}:{found['recipient']}"
    if not images:
        return {}
    # Claimed with it and kept: handed over just before it (claims go in send_at, id order).
    going = {d.idempotency_key for d in deliveries}
    messages = {
        d.idempotency_key: d
        for d in Delivery.objects.filter(idempotency_key__in=set(images.values()) - going).only(
            "id", "status", "status_reason", "send_at"
        )
    }
    decisions = {}
    for image_id, key in images.items():
        message = messages.get(key)
        if key in going or message is None or message.status in GONE_OUT:
            continue
        if message.status == Delivery.Status.SCHEDULED:
            decisions[image_id] = SendDecision(
                "defer",
                f"follows message {message.id}, which waits: {message.status_reason}"[:300],
                until=message.send_at if message.send_at > now else now + FOLLOW_RETRY,
            )
        elif message.status == Delivery.Status.SENDING:
            decisions[image_id] = SendDecision(
                "defer", f"follows message {message.id}, being sent", until=now + FOLLOW_RETRY
            )
        else:
            decisions[image_id] = SendDecision(
                "cancel",
                f"follows message {message.id}, which was not sent ({message.status}: "
                f"{message.status_reason})"[:300],
            )
    return decisions
