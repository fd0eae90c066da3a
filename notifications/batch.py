"""Batch customer notification (`batch_notify`, seeds 000 and 001), every step real:

launch (inputs → preconditions → HITL envelope) → approve the envelope (personalize: one
`hitl_review` proposal per recipient) → approve or reject per recipient or cohort-wide
(one Delivery per approved recipient, idempotency key `<run id>:<customer id>`) → dispatch
(retry policy 3 × 2 s..30 s; 5 consecutive failed sends abort the batch; resume or cancel)
→ post actions (run log, reflexion, `workflow.<status>` event, verify check staged).
"""

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import CharField, Count, Exists, F, Max, OuterRef, Q, Value
from django.db.models.functions import Cast, Concat

from notifications import tracking
from notifications.bulk import insert_rows
from notifications.cohort import canonical_filter, cohort
from notifications.events import record_event
from notifications.killswitches import launch_blockers
from notifications.models import (
    AuditEntry,
    BatchAttachment,
    Channel,
    Customer,
    Delivery,
    DeliveryEvent,
    Event,
    MessageTemplate,
    Notification,
    ProposedAction,
    ReflexionEntry,
    Suppression,
    VerifyCheck,
    Workflow,
    WorkflowRun,
)
from notifications.outbox import Recipient, kick_dispatch_on_commit, stage_deliveries
from notifications.templating import CompiledTemplate, Rendered, TemplateProblem, check_source
from notifications.unsubscribe import unsubscribe_url

logger = logging.getLogger(__name__)

WORKFLOW_NAME = "Batch customer notification"
DEFAULT_CAP = 50  # seed 001: recipients_cap = COALESCE(max_recipients, 50)
NO_SPAM_WINDOW = timedelta(hours=48)
BREAKER_FAILURES = 5
VERIFY_WINDOW = timedelta(seconds=60)
VERIFY_TIMEOUT = timedelta(hours=24)
VARIABLES = ("customer_name", "company_name", "account_ref", "school_year", "bid", "region")
SENT_STATUSES = ("sent", "delivered", "opened", "clicked")
# A recipient's outcome is logged once its delivery has a final status: sent or not, and
# why (a cancelled one by a person or by its run's cancel, with its reason, too).
LOGGED_STATUSES = (
    *SENT_STATUSES,
    "failed",
    "bounced",
    "complained",
    "skipped",
    "expired",
    "cancelled",
)
Status = WorkflowRun.Status


class BatchBlocked(Exception):
    """A precondition blocks the launch; nothing was written."""

    def __init__(self, messages: list[str]):
        super().__init__("; ".join(messages))
        self.messages = messages


class NeedsConfirmation(Exception):
    """A warning (48 h no-spam) that staff must confirm before the launch goes ahead."""

    def __init__(self, messages: list[str]):
        super().__init__("; ".join(messages))
        self.messages = messages


class AlreadyLaunched(Exception):
    """A launch confirmation that launched a run before (posted again, however much later):
    nothing was written. `run` is the run it launched."""

    def __init__(self, run: WorkflowRun):
        super().__init__(f"This confirmation already launched run {run.id}.")
        self.run = run


def launched_with(token: str) -> WorkflowRun | None:
    """The batch run a launch confirmation's token launched, if any."""
    if not token:
        return None
    return WorkflowRun.objects.filter(
        workflow__type=Workflow.Type.BATCH_NOTIFY, inputs__launch_token=token
    ).first()


@dataclass(frozen=True)
class Check:
    name: str
    severity: str  # block | warn
    passed: bool
    message: str


@dataclass
class Preview:
    recipients: list[Customer]
    suppressed: list[tuple[Customer, str]]
    invalid: list[Customer]  # left out: the stored address is not an email address
    unreachable: int  # matched by the filter, left out: inactive or without an email
    recently_emailed: list[tuple[Customer, datetime]]
    prior_sends: dict[int, datetime]
    checks: list[Check]
    samples: list[tuple[Customer, Rendered]] = field(default_factory=list)
    cap: int = DEFAULT_CAP

    @property
    def blocks(self) -> list[str]:
        return [c.message for c in self.checks if c.severity == "block" and not c.passed]

    @property
    def warnings(self) -> list[str]:
        return [c.message for c in self.checks if c.severity == "warn" and not c.passed]


def batch_workflow() -> Workflow:
    workflow, _ = Workflow.objects.get_or_create(
        name=WORKFLOW_NAME,
        defaults={
            "type": Workflow.Type.BATCH_NOTIFY,
            "risk_level": 4,
            "reflexion_enabled": True,
            "description": "Send templated email to a customer cohort (seed 001).",
        },
    )
    return workflow


# The customer fields a message may use (customer_context reads these).
CUSTOMER_CONTEXT_FIELDS = ("company_name", "account_ref", "school_year", "bid", "region")


def customer_context(customer: Customer) -> dict:
    return {
        "customer_name": customer.company_name,
        "company_name": customer.company_name,
        "account_ref": customer.account_ref,
        "school_year": customer.school_year,
        "bid": customer.bid,
        "region": customer.region,
    }


# The subject columns (template, review, delivery) hold 300 characters; the rendered
# subject adds the customer's values, so the written one is kept well within them (a
# rendered one longer than 300 is cut: templating.subject_line).
SUBJECT_MAX_LENGTH = 200


def compile_message(subject: str, body_template: str) -> CompiledTemplate:
    """The staff-written subject and body, checked; ValidationError naming every problem,
    each on its field (the subject's and the body's at once)."""
    declared = set(VARIABLES)
    problems: dict[str, str] = {}
    if len(subject) > SUBJECT_MAX_LENGTH:
        problems["subject"] = (
            f"A subject is at most {SUBJECT_MAX_LENGTH} characters; this one has {len(subject):,}."
        )
    compiled = {}
    for name, source, label in (
        ("subject", subject, "the subject"),
        ("body_template", body_template, "the body template"),
    ):
        if name in problems:
            continue
        try:
            compiled[name] = check_source(name, source, declared, label=label)
        except TemplateProblem as problem:
            problems[problem.field] = str(problem)
    if problems:
        raise ValidationError(problems)
    return CompiledTemplate(
        channel=Channel.EMAIL,
        variables=VARIABLES,
        subject=compiled["subject"],
        body=compiled["body_template"],
    )


def _checked(problems: dict, check, *args, **kwargs):
    """`check(*args, **kwargs)`, with its ValidationError's messages added to `problems`
    rather than raised: a form then shows every wrong field at once, not the first."""
    try:
        return check(*args, **kwargs)
    except ValidationError as error:
        error.update_error_dict(problems)
        return None


def clean_max_recipients(value, *, user=None) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError(
            {"max_recipients": "Max recipients must be a whole number."}
        ) from None
    ceiling = settings.BATCH_MAX_RECIPIENTS_CEILING
    if not 1 <= number <= ceiling:
        raise ValidationError(
            {"max_recipients": f"Max recipients must be between 1 and {ceiling}."}
        )
    if (
        number > DEFAULT_CAP
        and user is not None
        and not user.has_perm("notifications.override_recipient_cap")
    ):
        raise ValidationError(
            {
                "max_recipients": "Only staff with the cap-override permission may go above "
                f"{DEFAULT_CAP}."
            }
        )
    return number


def prior_sends(customer_ids: list[int]) -> dict[int, datetime]:
    """The seed's prior_sends: last batch_notify send per customer (one query)."""
    rows = (
        Delivery.objects.filter(
            recipient_key__in=[f"customer:{i}" for i in customer_ids],
            workflow_run__workflow__type=Workflow.Type.BATCH_NOTIFY,
            status__in=SENT_STATUSES,
        )
        .values("recipient_key")
        .annotate(last=Max("sent_at"))
    )
    return {int(row["recipient_key"].split(":")[1]): row["last"] for row in rows}


def build_preview(
    *,
    cohort_filter: str,
    subject: str,
    body_template: str,
    max_recipients,
    now: datetime,
    user=None,
) -> Preview:
    """Everything staff see before launching; raises ValidationError on bad input (every
    wrong field's message at once)."""
    problems: dict = {}
    compiled = _checked(problems, compile_message, subject, body_template)
    cap = _checked(problems, clean_max_recipients, max_recipients, user=user) or DEFAULT_CAP
    customers = _checked(problems, lambda: list(cohort(cohort_filter)))
    if problems:
        raise ValidationError(problems)
    unreachable = cohort(cohort_filter, base=Customer.objects.all()).count() - len(customers)
    valid = [is_email_address(c.email) for c in customers]
    invalid = [c for c, ok in zip(customers, valid, strict=True) if not ok]
    customers = [c for c, ok in zip(customers, valid, strict=True) if ok]
    found = tracking.suppressions_for([c.email for c in customers], Channel.EMAIL)
    recipients = [c for c in customers if c.email not in found]
    suppressed = [(c, found[c.email].get_reason_display()) for c in customers if c.email in found]
    last = prior_sends([c.id for c in recipients])
    recent = [
        (c, last[c.id]) for c in recipients if c.id in last and last[c.id] >= now - NO_SPAM_WINDOW
    ]
    blockers = launch_blockers()
    checks = [
        Check(
            "recipients_cap",
            "block",
            len(recipients) <= cap,
            f"{len(recipients)} recipients is over the cap of {cap}: tighten the filter or "
            "set a higher Max recipients (audited).",
        ),
        Check(
            "no_recent_spam",
            "warn",
            not recent,
            f"{len(recent)} recipient(s) were emailed by batch_notify in the last 48 hours: "
            + ", ".join(c.company_name for c, _ in recent[:10]),
        ),
        Check(
            "kill_switch",
            "block",
            not blockers,
            f"The kill switch{'es' if len(blockers) > 1 else ''} {', '.join(blockers)} "
            f"{'are' if len(blockers) > 1 else 'is'} on: launches are blocked.",
        ),
    ]
    if not recipients:
        checks.append(
            Check("empty_cohort", "block", False, "The filter selects no reachable customer.")
        )
    twin = unfinished_twin(
        cohort_filter=cohort_filter, subject=subject, body_template=body_template
    )
    if twin is not None:
        checks.append(Check("duplicate_batch", "block", False, _twin_message(twin)))
    samples = [(c, compiled.render(customer_context(c))) for c in recipients[:3]]
    empty = [
        (customer, part)
        for customer, rendered in samples
        for part, text in (("subject", rendered.subject), ("body", rendered.body))
        if not text.strip()
    ]
    if empty:
        customer, part = empty[0]
        checks.append(
            Check(
                "empty_message",
                "block",
                False,
                f"The {part} renders empty (for {customer.company_name}): write text the "
                "recipient can read.",
            )
        )
    return Preview(recipients, suppressed, invalid, unreachable, recent, last, checks, samples, cap)


def unfinished_twin(*, cohort_filter: str, subject: str, body_template: str) -> WorkflowRun | None:
    """A batch run with the same cohort filter, subject and body that has not finished
    (awaiting approval, sending, or aborted): launching it again would send everyone the
    same message twice (a confirmation page submitted twice, a double click, or the same
    batch typed again). The same as the cohort reads the filter (its conditions in any
    order, spaced or %-encoded, a value in any case where its lookup ignores case) and as
    the texts read (any line endings, whitespace around them)."""
    wanted = _batch_identity(cohort_filter, subject, body_template)
    runs = WorkflowRun.objects.filter(workflow=batch_workflow()).exclude(
        status__in=WorkflowRun.FINISHED
    )
    for run in runs.order_by("id").only("id", "inputs", "status"):
        inputs = run.inputs or {}
        if (
            _batch_identity(
                inputs.get("customer_cohort_filter") or "",
                inputs.get("subject") or "",
                inputs.get("body_template") or "",
            )
            == wanted
        ):
            return run
    return None


def _batch_identity(cohort_filter: str, subject: str, body_template: str) -> tuple:
    try:
        conditions = canonical_filter(cohort_filter)
    except ValidationError:  # a stored filter the parser refuses now: compared as written
        conditions = cohort_filter.strip()
    return conditions, _same_text(subject), _same_text(body_template)


# A template tag or variable with the spaces inside its braces as written: {{name}} and
# {{ name }} render the same.
_TAG = re.compile(r"(\{\{|\{%)\s*(.*?)\s*(\}\}|%\})", re.DOTALL)


def _same_text(text: str) -> str:
    """A text as it reads: CRLF (a browser's form) and LF (a command) are one message, as
    are lines with or without trailing spaces and tags with or without inner spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _TAG.sub(r"\1 \2 \3", text).strip()


def status_words(run: WorkflowRun) -> str:
    """The status's label inside a sentence: "awaiting approval (HITL gate)"."""
    label = run.get_status_display()
    return label[:1].lower() + label[1:]


def _twin_message(run: WorkflowRun) -> str:
    return (
        f"The same batch (filter, subject and body) is already run {run.id}, "
        f"{status_words(run)}: launching it again would send the same message "
        "twice. Approve or cancel that run, or change this one."
    )


def is_email_address(address: str) -> bool:
    """What the customer form accepts (an import may have stored anything): a send to
    anything else fails at the provider and counts towards the batch's breaker."""
    try:
        validate_email(address)
    except ValidationError:
        return False
    return True


def batch_launch(
    *,
    user,
    cohort_filter: str,
    subject: str,
    body_template: str,
    max_recipients=None,
    attachments=(),
    confirm_recent: bool = False,
    launch_token: str = "",
    now: datetime,
) -> WorkflowRun:
    """Check the preconditions and stage the HITL envelope. Nothing is sent yet.
    `launch_token` names the confirmation that launches it: one posted again (the browser's
    back button, a double click, days later) raises AlreadyLaunched."""
    if not user.has_perm("notifications.launch_batch"):
        raise PermissionDenied("You may not launch batch notifications.")
    preview = build_preview(
        cohort_filter=cohort_filter,
        subject=subject,
        body_template=body_template,
        max_recipients=max_recipients,
        now=now,
        user=user,
    )
    if preview.blocks:
        raise BatchBlocked(preview.blocks)
    if preview.warnings and not confirm_recent:
        raise NeedsConfirmation(preview.warnings)
    cap = clean_max_recipients(max_recipients, user=user)
    with transaction.atomic():
        # Launches one at a time, so two submissions of one confirmation cannot both pass
        # the twin check (the preview's, above, ran outside this transaction).
        Workflow.objects.select_for_update().filter(pk=batch_workflow().pk).first()
        if (used := launched_with(launch_token)) is not None:
            raise AlreadyLaunched(used)
        twin = unfinished_twin(
            cohort_filter=cohort_filter, subject=subject, body_template=body_template
        )
        if twin is not None:
            raise BatchBlocked([_twin_message(twin)])
        run = WorkflowRun.objects.create(
            workflow=batch_workflow(),
            status=Status.AWAITING_APPROVAL,
            started_at=now,
            created_by=user.get_username(),
            inputs={
                "customer_cohort_filter": cohort_filter,
                "subject": subject,
                "body_template": body_template,
                "max_recipients": cap,
                "customer_ids": [c.id for c in preview.recipients],
                "suppressed": [c.id for c, _ in preview.suppressed],
                "invalid_address": [c.id for c in preview.invalid],
                "warnings_confirmed": preview.warnings,
                **({"launch_token": launch_token} if launch_token else {}),
            },
        )
        template = MessageTemplate.objects.create(
            name=f"batch_notify run {run.id}",
            channel=Channel.EMAIL,
            subject=subject,
            body=body_template,
            variables=list(VARIABLES),
            batch_run=run,
        )
        run.inputs["template_id"] = template.id
        run.save(update_fields=["inputs"])
        for upload in attachments:
            BatchAttachment.objects.create(
                workflow_run=run,
                file=upload,
                name=upload.name,
                mimetype=getattr(upload, "content_type", "") or "",
            )
        if cap and cap > DEFAULT_CAP:
            AuditEntry.objects.create(
                at=now,
                by=user.get_username(),
                action="max_recipients_override",
                target=f"workflow:batch_notify:run_{run.id}",
                detail={"max_recipients": cap, "recipients": len(preview.recipients)},
            )
        ProposedAction.objects.create(
            action_type=ProposedAction.Type.BATCH_ENVELOPE,
            entity_ref=f"workflow:batch_notify:run_{run.id}",
            workflow_run=run,
            subject=subject,
            body=f"Send {subject!r} to {len(preview.recipients)} customers "
            f"(filter {cohort_filter}).",
            created_at=now,
        )
    return run


def _claim(ids, *, status: str, user, now: datetime) -> list[int]:
    """Move pending proposals to `status`; returns the ids this call moved. A second
    decision on the same row, or two staff deciding at once, moves nothing (logged)."""
    with transaction.atomic():
        pending = list(
            ProposedAction.objects.filter(id__in=list(ids), status=ProposedAction.Status.PENDING)
            .select_for_update(skip_locked=True)
            .values_list("id", flat=True)
        )
        ProposedAction.objects.filter(id__in=pending, status=ProposedAction.Status.PENDING).update(
            status=status, decided_by=user.get_username(), decided_at=now
        )
    skipped = set(ids) - set(pending)
    if skipped:
        logger.info("proposals %s already decided: %s is a no-op", sorted(skipped), status)
    return pending


def require_decider(user) -> None:
    if not user.has_perm("notifications.decide_proposedaction"):
        raise PermissionDenied("You may not approve or reject proposed actions.")


def envelope_approve(*, envelope: ProposedAction, user, now: datetime) -> int:
    """Approve the HITL gate: personalize per recipient and stage one review each.
    Returns how many reviews were staged (0 when the envelope was already decided).

    The gate's approval, its reviews and the run's move to awaiting review are committed
    together, with the run locked: a cancel (or a crash) between them left an approved
    gate whose reviews were then staged, pending, in a cancelled run (or never staged)."""
    require_decider(user)
    if not ProposedAction.objects.filter(
        id=envelope.id, status=ProposedAction.Status.PENDING
    ).exists():
        logger.info("proposal %s already decided: approved is a no-op", envelope.id)
        return 0
    run = envelope.workflow_run
    # Rendered before the transaction: personalizing 10,000 messages need not hold the
    # run's lock (nor, on SQLite, the database's write lock).
    reviews = _personalized_reviews(run, now=now)
    with transaction.atomic():
        _lock_runs([run.id])
        if not _claim([envelope.id], status=ProposedAction.Status.APPROVED, user=user, now=now):
            return 0
        staged = insert_rows(ProposedAction, reviews, ignore_conflicts=True)
        WorkflowRun.objects.filter(id=run.id, status=Status.AWAITING_APPROVAL).update(
            status=Status.AWAITING_REVIEW
        )
    return staged


def _personalized_reviews(run: WorkflowRun, *, now: datetime) -> list[dict]:
    """One `hitl_review` row per recipient of the run, its message personalized."""
    compiled = compile_message(run.inputs["subject"], run.inputs["body_template"])
    fields = ("id", *CUSTOMER_CONTEXT_FIELDS)
    customers = (
        SimpleNamespace(**row)  # the fields the message may use, not 10,000 model instances
        for row in Customer.objects.filter(id__in=run.inputs["customer_ids"])
        .order_by("id")
        .values(*fields)
    )
    reviews = []
    for customer in customers:
        # Reviewers read (and approve) the text; the layout is added when it is staged.
        subject, body = compiled.render_text(customer_context(customer))
        reviews.append(
            {
                "action_type": ProposedAction.Type.HITL_REVIEW,
                "entity_ref": f"workflow:batch_notify:run_{run.id}:customer_{customer.id}",
                "workflow_run_id": run.id,
                "customer_id": customer.id,
                "subject": subject,
                "body": body,
                "created_at": now,
            }
        )
    return reviews


def _lock_runs(run_ids) -> list[int]:
    """Lock these runs (in id order, so two deciders never wait on each other) until the
    transaction ends, as `finalize_if_done` and `operations.delivery_retry` lock theirs.
    On SQLite the transaction's write lock (BEGIN IMMEDIATE) already serializes them."""
    return list(
        WorkflowRun.objects.select_for_update()
        .filter(id__in=run_ids)
        .order_by("id")
        .values_list("id", flat=True)
    )


def unreachable_reviews(proposals) -> tuple[int, int]:
    """Of these reviews' customers: how many would be skipped now, not sent (suppressed for
    email: unsubscribed, bounced or complained since the launch, which dispatch skips; or
    marked inactive since the launch, skipped when approved), and how many have an email
    that is no email address now, or none (an import changed it since the launch: the send
    fails, and counts towards the batch's breaker)."""
    customers = proposals.filter(action_type=ProposedAction.Type.HITL_REVIEW).values_list(
        "customer__email", "customer__is_inactive"
    )
    emails, inactive = {}, set()
    for key, (email, is_inactive) in enumerate(customers):
        emails[key] = email
        if is_inactive:
            inactive.add(key)
    kinds = [kind for kind, _ in screen_addresses(emails, inactive=inactive).values()]
    skipped = kinds.count("suppressed") + kinds.count("inactive")
    return skipped, len(kinds) - skipped


def screen_addresses(emails: dict, *, inactive=()) -> dict:
    """Why each of these emails (by any key) would not be reached now, as (kind, reason):
    "inactive" (the keys in `inactive`: their customer is marked inactive, so approving
    skips them, whatever their email), "missing", "invalid" (no email address) or
    "suppressed" (with the suppression's reason); none for one that would. One
    suppression query for the lot."""
    inactive = set(inactive)
    valid = [e for k, e in emails.items() if k not in inactive and e and is_email_address(e)]
    found = tracking.suppressions_for(valid, Channel.EMAIL)
    screened = {}
    for key, email in emails.items():
        if key in inactive:
            screened[key] = ("inactive", "customer marked inactive")
        elif not email:
            screened[key] = ("missing", "")
        elif not is_email_address(email):
            screened[key] = ("invalid", "")
        elif email in found:
            screened[key] = ("suppressed", found[email].get_reason_display())
    return screened


def envelope_reject(*, envelope: ProposedAction, user, now: datetime) -> bool:
    """Reject the gate: the run is cancelled before anything was personalized, and ends as
    a cancelled run does (audit entry, reflexion, event, verify check: seed 001's post
    actions run for every ending)."""
    require_decider(user)
    with transaction.atomic():
        if not _claim([envelope.id], status=ProposedAction.Status.REJECTED, user=user, now=now):
            return False
        ended = (
            WorkflowRun.objects.filter(id=envelope.workflow_run_id)
            .exclude(status__in=WorkflowRun.FINISHED)
            .update(
                status=Status.CANCELLED,
                status_reason="rejected at the HITL gate",
                completed_at=now,
            )
        )
        if ended:
            AuditEntry.objects.create(
                at=now,
                by=user.get_username(),
                action="batch_gate_reject",
                target=f"run_{envelope.workflow_run_id}",
            )
    if ended:
        _post_actions(WorkflowRun.objects.get(id=envelope.workflow_run_id), now=now)
    return True


@dataclass(frozen=True)
class Decided:
    decided: int
    already_decided: int
    deliveries: int  # staged to be sent
    skipped_inactive: int = 0  # staged skipped: the customer was marked inactive


def reviews_decide(*, ids, approve: bool, user, now: datetime) -> Decided:
    """Approve or reject per-recipient reviews (one row, a selection or a whole cohort).
    Approved recipients become deliveries keyed `<run id>:<customer id>`.

    The decisions and the deliveries are committed together, with the runs locked: a
    finalize between them (a second click's, or any dispatch's sweep) found nothing
    awaiting and nothing to send and closed the run "completed, 0 sent"."""
    require_decider(user)
    ids = list(ids)
    status = ProposedAction.Status.APPROVED if approve else ProposedAction.Status.REJECTED
    created = skipped = 0
    with transaction.atomic():
        runs = _lock_runs(ProposedAction.objects.filter(id__in=ids).values("workflow_run_id"))
        moved = _claim(ids, status=status, user=user, now=now)
        if approve and moved:
            created, skipped = _stage_approved(ProposedAction.objects.filter(id__in=moved), now=now)
        WorkflowRun.objects.filter(id__in=runs, status=Status.AWAITING_REVIEW).update(
            status=Status.RUNNING
        )
    for run_id in runs:
        finalize_if_done(run_id, now=now)
    return Decided(len(moved), len(ids) - len(moved), created - skipped, skipped)


INACTIVE_REASON = "the customer is marked inactive (since the launch): not sent"


def _stage_approved(reviews, *, now: datetime) -> tuple[int, int]:
    """Stage a delivery per approved review; returns how many were new, and how many of
    those were skipped at once: their customer was marked inactive after the launch (the
    seed's recipients are active customers only)."""
    created = 0
    by_run: dict[int, list[SimpleNamespace]] = {}
    inactive: set[str] = set()
    # Read as plain values (two model instances per recipient cost more than rendering),
    # and without the run: joined, every review would carry its own parsed copy of the
    # run's inputs (the cohort's customer ids), 10,000 lists for a 10,000 batch.
    fields = ("email", *CUSTOMER_CONTEXT_FIELDS)
    for row in reviews.values(
        "workflow_run_id",
        "customer_id",
        "subject",
        "body",
        "customer__is_inactive",
        *(f"customer__{f}" for f in fields),
    ):
        review = SimpleNamespace(
            customer_id=row["customer_id"],
            subject=row["subject"],
            body=row["body"],
            customer=SimpleNamespace(**{f: row[f"customer__{f}"] for f in fields}),
        )
        by_run.setdefault(row["workflow_run_id"], []).append(review)
        if row["customer__is_inactive"]:
            inactive.add(f"{row['workflow_run_id']}:{row['customer_id']}")
    runs = WorkflowRun.objects.in_bulk(list(by_run))
    with transaction.atomic():  # the inactive ones are never seen scheduled by a dispatcher
        for run_id, group in by_run.items():
            run = runs[run_id]
            attachments = [
                {"filename": a.name, "path": a.file.path, "mimetype": a.mimetype}
                for a in run.attachments.all()
            ]
            notification, _ = Notification.objects.get_or_create(
                workflow_run=run,
                origin=f"batch_notify:run_{run.id}",
                defaults={"template_id": run.inputs["template_id"], "created_at": now},
            )
            created += stage_deliveries(
                notification=notification,
                recipients=[
                    Recipient(
                        key=f"customer:{r.customer_id}",
                        address=r.customer.email,
                        context=customer_context(r.customer),
                        approved_text=(r.subject, r.body),
                        # The seed's key: `${workflow_run_id}:${customer_id}`.
                        idempotency_key=f"{run.id}:{r.customer_id}",
                    )
                    for r in group
                ],
                now=now,
                key_prefix=str(run.id),
                payload={"attachments": attachments} if attachments else None,
            )
        skipped = _skip_inactive(inactive, now=now)
    return created, skipped


def _skip_inactive(keys: set[str], *, now: datetime) -> int:
    """Skip the just-staged deliveries (by idempotency key) of customers marked inactive,
    each with an event saying why."""
    if not keys:
        return 0
    rows = Delivery.objects.filter(idempotency_key__in=keys, status=Delivery.Status.SCHEDULED)
    ids = list(rows.values_list("id", flat=True))
    Delivery.objects.filter(id__in=ids, status=Delivery.Status.SCHEDULED).update(
        status=Delivery.Status.SKIPPED, status_reason=INACTIVE_REASON, updated_at=now
    )
    DeliveryEvent.objects.bulk_create(
        [DeliveryEvent(delivery_id=i, kind="skipped", at=now, reason=INACTIVE_REASON) for i in ids]
    )
    return len(ids)


def on_send_outcome(delivery: Delivery, outcome: str, now: datetime) -> bool:
    """Dispatch tells every outcome; for batch runs, count consecutive failed sends and trip
    the batch breaker at five. Returns True to halt the rest of the run."""
    if not delivery.workflow_run_id or outcome not in ("sent", "failed", "retried"):
        return False
    runs = WorkflowRun.objects.filter(
        id=delivery.workflow_run_id, workflow__type=Workflow.Type.BATCH_NOTIFY
    )
    if outcome == "sent":
        runs.filter(consecutive_failures__gt=0).update(consecutive_failures=0)
        return False
    if (
        outcome == "retried"
        and delivery.channel == Channel.EMAIL
        and delivery.recipient_key.startswith("customer:")
        and runs.exists()
    ):
        _readdress_corrected([delivery.id], by="herald", retry="its automatic retry", now=now)
    runs.update(consecutive_failures=F("consecutive_failures") + 1)
    tripped = runs.filter(status=Status.RUNNING, consecutive_failures__gte=BREAKER_FAILURES).update(
        status=Status.ABORTED,
        status_reason=f"circuit breaker: {BREAKER_FAILURES} consecutive failed sends "
        f"(last: {delivery.address})",
    )
    if tripped:
        record_event(
            "workflow.aborted",
            {"workflow_run_id": delivery.workflow_run_id, "reason": "circuit_breaker_tripped"},
            idempotency_key=f"workflow_run:{delivery.workflow_run_id}:aborted:{now.isoformat()}",
            now=now,
        )
        return True
    if outcome == "failed":
        finalize_if_done(delivery.workflow_run_id, now=now)
    return runs.filter(status=Status.ABORTED).exists()


def on_sent(run_ids: set[int], now: datetime) -> None:
    """After a bulk write of successes: close the batches that have nothing left to send."""
    for run_id in run_ids:
        if not Delivery.objects.filter(
            workflow_run_id=run_id, status__in=["scheduled", "sending"]
        ).exists():
            finalize_if_done(run_id, now=now)


def require_resumer(user) -> None:
    if not user.has_perm("notifications.resume_batch"):
        raise PermissionDenied("You may not resume or cancel batch notifications.")


def run_resume(*, run: WorkflowRun, user, now: datetime) -> bool:
    """Continue an aborted batch from where it stopped: only its unsent deliveries go."""
    require_resumer(user)
    resumed = WorkflowRun.objects.filter(id=run.id, status=Status.ABORTED).update(
        status=Status.RUNNING,
        status_reason=f"resumed by {user.get_username()}",
        consecutive_failures=0,
    )
    if resumed:
        AuditEntry.objects.create(
            at=now, by=user.get_username(), action="batch_resume", target=f"run_{run.id}"
        )
        kick_dispatch_on_commit()
    return bool(resumed)


def run_cancel(*, run: WorkflowRun, user, now: datetime) -> int:
    """Stop a batch for good: scheduled deliveries and pending reviews are cancelled."""
    require_resumer(user)
    with transaction.atomic():
        moved = (
            WorkflowRun.objects.filter(id=run.id)
            .exclude(status__in=WorkflowRun.FINISHED)
            .update(status=Status.CANCELLED, status_reason=f"cancelled by {user.get_username()}")
        )
        if not moved:
            return 0
        pending = Delivery.objects.filter(workflow_run=run, status=Delivery.Status.SCHEDULED)
        ids = list(pending.values_list("id", flat=True))
        pending.filter(id__in=ids).update(
            status=Delivery.Status.CANCELLED,
            status_reason=f"batch cancelled by {user.get_username()}",
        )
        DeliveryEvent.objects.bulk_create(
            [
                DeliveryEvent(delivery_id=i, kind="cancelled", at=now, reason="batch cancelled")
                for i in ids
            ]
        )
        ProposedAction.objects.filter(
            workflow_run=run, status=ProposedAction.Status.PENDING
        ).update(
            status=ProposedAction.Status.REJECTED, decided_by="batch cancelled", decided_at=now
        )
        AuditEntry.objects.create(
            at=now, by=user.get_username(), action="batch_cancel", target=f"run_{run.id}"
        )
    _post_actions(WorkflowRun.objects.get(id=run.id), now=now)
    return len(ids)


# Suppressions that mean the person asked not to be written to (a bounce only says the
# address does not work: correcting it is what the new address is for).
OPTED_OUT = (Suppression.Reason.UNSUBSCRIBE, Suppression.Reason.COMPLAINT)


@dataclass
class Readdressed:
    """What correcting a customer's email did to their batch deliveries not yet sent."""

    readdressed: int = 0  # scheduled or failed: they now go to the new address
    cancelled: int = 0  # scheduled, and the email was removed
    still_failed: int = 0  # failed, and the email was removed: nowhere to retry them to
    kept_opted_out: int = 0  # not moved: the old address unsubscribed or complained
    in_flight: int = 0  # being sent or sent unknown: the old address, as the provider has it


def customer_email_changed(
    *, customer_id: int, old: str, new: str, by: str, now: datetime, reason: str = ""
):
    """A customer's email corrected after a batch message was staged for them: their email
    deliveries not yet sent (scheduled, or failed and so retryable) go to the new address,
    with an unsubscribe link for it; with the email removed, the scheduled ones are
    cancelled. Each gets an event saying so (`reason`, or who changed it). Rows being sent
    are left as they are: a retry re-addresses them (`_readdress_corrected`)."""
    result = Readdressed()
    if old == new:
        return result
    reason = (
        reason or f"the customer's email was changed from {old} to {new or '(none)'} by {by}"
    )[:300]
    rows = Delivery.objects.filter(
        recipient_key=f"customer:{customer_id}", channel=Channel.EMAIL, address=old
    )
    in_flight = rows.filter(status__in=[Delivery.Status.SENDING, Delivery.Status.UNKNOWN])
    result.in_flight = in_flight.count()
    # A cancelled batch's failed deliveries are never retried: left as they are.
    failed = rows.filter(status=Delivery.Status.FAILED).exclude(
        workflow_run__status=Status.CANCELLED
    )
    # With the email removed, a failed delivery stays failed: there is nowhere to retry it to.
    movable = rows.filter(status=Delivery.Status.SCHEDULED)
    if new:
        movable = movable | failed
    else:
        result.still_failed = failed.count()
    opted_out = tracking.suppressions_for([old], Channel.EMAIL).get(old)
    if new and opted_out is not None and opted_out.reason in OPTED_OUT:
        # Someone who unsubscribed (or complained) is not written to at a new address by
        # moving what they opted out of: those emails stay, and are skipped at send.
        result.kept_opted_out = movable.count()
        return result
    events = []
    with transaction.atomic():
        for delivery in movable.select_for_update(of=("self",)):
            # A re-addressed row keeps its status and its reason (a failed one's error):
            # the event says what changed.
            changes = (
                _readdressed(delivery, new)
                if new
                else {"status": Delivery.Status.CANCELLED, "status_reason": reason}
            )
            if Delivery.objects.filter(id=delivery.id, status=delivery.status, address=old).update(
                updated_at=now, **changes
            ):
                kind = DeliveryEvent.Kind.READDRESSED if new else DeliveryEvent.Kind.CANCELLED
                events.append(
                    DeliveryEvent(delivery_id=delivery.id, kind=kind, at=now, reason=reason)
                )
        DeliveryEvent.objects.bulk_create(events)
        if events:
            AuditEntry.objects.create(
                at=now,
                by=by,
                action="customer_email_change",
                target=f"customer:{customer_id}",
                detail={"old": old, "new": new, "deliveries": [e.delivery_id for e in events]},
            )
    if new:
        result.readdressed = len(events)
    else:
        result.cancelled = len(events)
    return result


def customer_deactivated(*, customer_id: int, by: str, now: datetime, reason: str = "") -> int:
    """A customer marked inactive after a batch message was staged for them: their batch
    deliveries still scheduled are cancelled, each with an event saying who did it, as a
    cohort leaves inactive customers out and approving skips them. Returns how many."""
    reason = (reason or f"the customer was marked inactive by {by}")[:300]
    rows = Delivery.objects.filter(
        recipient_key=f"customer:{customer_id}",
        status=Delivery.Status.SCHEDULED,
        workflow_run__workflow__type=Workflow.Type.BATCH_NOTIFY,
    )
    with transaction.atomic():
        ids = list(rows.select_for_update(of=("self",)).values_list("id", flat=True))
        Delivery.objects.filter(id__in=ids, status=Delivery.Status.SCHEDULED).update(
            status=Delivery.Status.CANCELLED, status_reason=reason, updated_at=now
        )
        DeliveryEvent.objects.bulk_create(
            [
                DeliveryEvent(
                    delivery_id=i, kind=DeliveryEvent.Kind.CANCELLED, at=now, reason=reason
                )
                for i in ids
            ]
        )
        if ids:
            AuditEntry.objects.create(
                at=now,
                by=by,
                action="customer_deactivated",
                target=f"customer:{customer_id}",
                detail={"deliveries": ids},
            )
    return len(ids)


@dataclass
class RetryAddresses:
    """What re-addressing before a retry did: how many go to the customer's corrected
    email, and which (ids) were left, their customer having no email now."""

    readdressed: int = 0
    no_email: list[int] = field(default_factory=list)
    inactive: list[int] = field(default_factory=list)  # their customer is marked inactive now


def readdress_before_retry(*, ids, by: str, now: datetime) -> RetryAddresses:
    """Failed batch emails about to be retried whose customer's email changed after they
    were claimed (they were being sent, or their outcome was unknown, when it was
    corrected): re-addressed first, so the retry reaches the email as it is now. Those
    whose customer has no email now stay failed: the caller leaves them out of the retry."""
    return _readdress_corrected(
        ids, by=by, retry=f"the retry by {by}", now=now, status=Delivery.Status.FAILED
    )


def kept_from_retry(ids) -> RetryAddresses:
    """Which of these failed batch emails a person's retry would leave failed, read only
    (what its confirmation names): the customer is marked inactive now (`inactive`), or
    has no email any more (`no_email`)."""
    result = RetryAddresses()
    rows, customer_of, emails, inactive = _customers_now(ids, Delivery.Status.FAILED)
    for row_id, _, _ in rows:
        customer_id = customer_of.get(row_id)
        if customer_id in inactive:
            result.inactive.append(row_id)
        elif customer_id in emails and not emails[customer_id]:
            result.no_email.append(row_id)
    return result


def _customers_now(ids, status: str) -> tuple[list, dict[int, int], dict[int, str], set[int]]:
    """For these batch emails in `status`: their (id, recipient key, address) rows, each
    row's customer, each customer's email now, and the customers marked inactive now."""
    rows = list(
        Delivery.objects.filter(
            id__in=list(ids),
            status=status,
            channel=Channel.EMAIL,
            recipient_key__startswith="customer:",
        ).values_list("id", "recipient_key", "address")
    )
    customer_of = {
        row_id: int(key.split(":", 1)[1])
        for row_id, key, _ in rows
        if key.split(":", 1)[1].isdigit()
    }
    customers = Customer.objects.filter(id__in=customer_of.values())
    emails, inactive = {}, set()
    for customer_id, email, is_inactive in customers.values_list("id", "email", "is_inactive"):
        emails[customer_id] = email
        if is_inactive:
            inactive.add(customer_id)
    return rows, customer_of, emails, inactive


def _readdress_corrected(
    ids, *, by: str, retry: str, now: datetime, status: str = Delivery.Status.SCHEDULED
) -> RetryAddresses:
    """Re-address these batch emails (in `status`: failed ones about to be retried by a
    person, or scheduled ones put back for an automatic retry) whose customer's email was
    corrected while they were being sent, so the correction missed them; `retry` says which
    retry in their events. Where the email was removed, a scheduled one is cancelled and a
    failed one left failed; both are named in `no_email`. Where the customer is marked
    inactive now, the same, named in `inactive`."""
    result = RetryAddresses()
    rows, customer_of, emails, inactive = _customers_now(ids, status)
    for row_id, _, address in rows:
        if row_id not in customer_of:
            continue
        customer_id = customer_of[row_id]
        if customer_id not in emails:
            continue  # no such customer (any more): nothing to go by
        if customer_id in inactive:
            # Marked inactive while this was being sent (or since it failed): not retried.
            # A scheduled one is cancelled with the customer's other scheduled emails.
            result.inactive.append(row_id)
            if status == Delivery.Status.SCHEDULED:
                why = (
                    "the customer was marked inactive while this was being sent; not sent by "
                    f"{retry}"
                )
                customer_deactivated(customer_id=customer_id, by=by, now=now, reason=why)
            continue
        current = emails[customer_id]
        if current == address:
            continue
        if not current:
            result.no_email.append(row_id)
            why = f"the customer's email was removed while this was being sent; not sent by {retry}"
        else:
            why = (
                f"the customer's email was corrected from {address} to {current} while this "
                f"was being sent; re-addressed for {retry}"
            )
        done = customer_email_changed(
            customer_id=customer_id, old=address, new=current, by=by, now=now, reason=why
        )
        result.readdressed += done.readdressed
    return result


def _readdressed(delivery: Delivery, address: str) -> dict:
    """The fields of a delivery sent to `address` instead: its unsubscribe link (footer and
    List-Unsubscribe header) signed for the new address."""
    payload = dict(delivery.payload)
    headers = dict(payload.get("headers") or {})
    changes = {"address": address}
    listed = headers.get("List-Unsubscribe", "")
    if listed.startswith("<") and listed.endswith(">"):
        old_url, new_url = listed[1:-1], unsubscribe_url(address, Channel.EMAIL)
        headers["List-Unsubscribe"] = f"<{new_url}>"
        payload["headers"] = headers
        changes.update(
            payload=payload,
            body=delivery.body.replace(old_url, new_url),
            html_body=delivery.html_body.replace(old_url, new_url),
        )
    return changes


def run_progress(run: WorkflowRun) -> dict:
    """Counts for the progress bar: sent / failed / pending of the approved total. What was
    not sent is counted by why (skipped, expired, cancelled), and as `not_sent`, their sum."""
    counts = Delivery.objects.filter(workflow_run=run).aggregate(
        sent=Count("id", filter=Q(status__in=SENT_STATUSES)),
        failed=Count("id", filter=Q(status__in=["failed", "bounced", "complained", "unknown"])),
        skipped=Count("id", filter=Q(status="skipped")),
        expired=Count("id", filter=Q(status="expired")),
        cancelled=Count("id", filter=Q(status="cancelled")),
        pending=Count("id", filter=Q(status__in=["scheduled", "sending"])),
    )
    counts["not_sent"] = counts["skipped"] + counts["expired"] + counts["cancelled"]
    reviews = ProposedAction.objects.filter(
        workflow_run=run, action_type=ProposedAction.Type.HITL_REVIEW
    ).aggregate(
        awaiting=Count("id", filter=Q(status="pending")),
        approved=Count("id", filter=Q(status="approved")),
        rejected=Count("id", filter=Q(status="rejected")),
    )
    total = len(run.inputs.get("customer_ids", []))
    done = counts["sent"] + counts["failed"] + counts["not_sent"] + reviews["rejected"]
    return {
        **counts,
        **reviews,
        "total": total,
        "percent": round(100 * done / total) if total else 0,
    }


def finalize_if_done(run_id: int, *, now: datetime) -> str | None:
    """Close a running batch once nothing is left to decide, stage or send."""
    if _left_to_do(run_progress(WorkflowRun.objects.get(id=run_id))):
        return None  # the usual answer, given without taking the run's lock
    with transaction.atomic():
        # Locked, and read again: reviews_decide holds this lock from its approvals until
        # their deliveries are staged, so a run is never read with the one and not the other.
        if not _lock_runs([run_id]) or _approved_unstaged(run_id):
            return None
        progress = run_progress(WorkflowRun.objects.get(id=run_id))
        if _left_to_do(progress):
            return None
        status = _ending(progress)
        # not what it was while running ("resumed by ..."), but how it ended
        reason = f"ended {status}: {_counts_said(progress)}"
        if not WorkflowRun.objects.filter(id=run_id, status=Status.RUNNING).update(
            status=status, status_reason=reason, completed_at=now, summary=progress
        ):
            return None
    _post_actions(WorkflowRun.objects.get(id=run_id), now=now)
    return status


def _counts_said(progress: dict) -> str:
    """How a batch ended, in words: what was not sent is said by why it was not (skipped,
    expired, cancelled), each that happened; "0 skipped" when nothing was left unsent."""
    not_sent = [
        f"{progress[why]} {why}" for why in ("skipped", "expired", "cancelled") if progress[why]
    ] or ["0 skipped"]
    return (
        f"{progress['sent']} sent, {progress['failed']} failed, {', '.join(not_sent)}, "
        f"{progress['rejected']} rejected of {progress['total']}"
    )


def _left_to_do(progress: dict) -> bool:
    return bool(progress["pending"] or progress["awaiting"])


def _approved_unstaged(run_id: int) -> bool:
    """Whether a review of the run is approved but has no delivery yet: still to be staged
    (by a decision in progress elsewhere, or one that failed part way), so not done."""
    staged = Delivery.objects.filter(
        workflow_run_id=run_id,
        idempotency_key=Concat(Value(f"{run_id}:"), Cast(OuterRef("customer_id"), CharField())),
    )
    return (
        ProposedAction.objects.filter(
            workflow_run_id=run_id,
            action_type=ProposedAction.Type.HITL_REVIEW,
            status=ProposedAction.Status.APPROVED,
        )
        .exclude(Exists(staged))
        .exists()
    )


def _ending(progress: dict) -> str:
    if progress["sent"] and not (
        progress["failed"] or progress["not_sent"] or progress["rejected"]
    ):
        return Status.COMPLETED
    if progress["sent"]:
        return Status.PARTIAL
    if progress["failed"] or progress["not_sent"]:
        return Status.FAILED
    return Status.COMPLETED  # every recipient was rejected: nothing to send, nothing failed


def _post_actions(run: WorkflowRun, *, now: datetime) -> None:
    """Seed 001's post actions: run log (the run row itself), reflexion, event, verify."""
    progress = run_progress(run)
    WorkflowRun.objects.filter(id=run.id).update(
        summary=progress, completed_at=run.completed_at or now
    )
    # A batch reopened by a retry ends again: a reflexion entry of its own says how (the
    # first one, a record, stays as it was), it emits its event again, and its verify check
    # is run again. finalize_if_done comes here once per ending.
    if run.workflow.reflexion_enabled:
        ReflexionEntry.objects.create(
            workflow_run=run,
            narrative=(
                f"batch_notify run {run.id} ({run.inputs.get('subject', '')!r}) ended "
                f"{run.status}: {_counts_said(progress)}."
            ),
            tags=["batch_notify", run.status],
            created_at=now,
        )
    event = {"completed": "completed", "partial": "partial", "cancelled": "cancelled"}.get(
        run.status, "failed"
    )
    key = f"workflow_run:{run.id}:finished"
    if Event.objects.filter(idempotency_key=key).exists():  # it ended before being reopened
        key = f"{key}:{now.isoformat()}"
    record_event(
        f"workflow.{event}",
        {
            "workflow_run_id": run.id,
            "workflow_type": "batch_notify",
            "status": run.status,
            **progress,
        },
        idempotency_key=key,
        now=now,
    )
    VerifyCheck.objects.update_or_create(
        workflow_run=run,
        name="all_recipients_logged",
        defaults={
            "status": VerifyCheck.Status.PENDING,
            "due_at": now + VERIFY_WINDOW,
            "timeout_at": now + VERIFY_TIMEOUT,
            "checked_at": None,
            "expected": None,
            "observed": None,
            "detail": "",
        },
    )


def finalize_ready_runs(*, now: datetime) -> int:
    """Sweep: running batches whose last delivery was decided outside a send (expired,
    cancelled, reconciled) are closed here."""
    closed = 0
    for run_id in WorkflowRun.objects.filter(
        status=Status.RUNNING, workflow__type=Workflow.Type.BATCH_NOTIFY
    ).values_list("id", flat=True):
        closed += finalize_if_done(run_id, now=now) is not None
    return closed


def run_verify_checks(*, now: datetime) -> dict[str, int]:
    """The verify cron (:08 and :38): run checks whose window has passed."""
    counts = {"pass": 0, "fail": 0, "timeout": 0, "waiting": 0}
    for check in VerifyCheck.objects.filter(
        status=VerifyCheck.Status.PENDING, due_at__lte=now
    ).select_related("workflow_run"):
        counts[_verify(check, now=now)] += 1
    return counts


def _verify(check: VerifyCheck, *, now: datetime) -> str:
    run = check.workflow_run
    expected = ProposedAction.objects.filter(
        workflow_run=run, action_type=ProposedAction.Type.HITL_REVIEW, status="approved"
    ).count()
    observed = (
        Delivery.objects.filter(workflow_run=run, status__in=LOGGED_STATUSES)
        .values("recipient_key")
        .distinct()
        .count()
    )
    if observed == expected:
        status, detail = VerifyCheck.Status.PASS, f"{observed} of {expected} recipients logged"
    elif now >= check.timeout_at:
        status, detail = VerifyCheck.Status.TIMEOUT, f"only {observed} of {expected} logged in time"
    elif run.status in WorkflowRun.FINISHED:
        status, detail = VerifyCheck.Status.FAIL, f"{observed} of {expected} recipients logged"
    else:
        return "waiting"
    VerifyCheck.objects.filter(id=check.id, status=VerifyCheck.Status.PENDING).update(
        status=status, checked_at=now, expected=expected, observed=observed, detail=detail
    )
    return status
