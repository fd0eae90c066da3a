"""Workload 2 — dispatch drain: 10,000 due deliveries through a provider fake that answers at
once (Django's dummy email backend, for Herald and post-office alike).

Herald: `dispatch_due` until the outbox is empty (claims, suppression and send-time checks,
pacing, breaker, one DeliveryEvent per send, bulk writes of the outcomes).

Baselines, on the same 10,000 rendered emails:
- django-post-office `send_queued` until its queue is empty, at its defaults (batches of
  100, log level 2) and tuned (batches of 1,000, log level 1);
- the floor: a raw loop that claims 1,000 rows with a conditional update, hands each stored
  message to the same provider fake, and marks the lot sent with one update. It renders
  nothing (the text is in the row, as in Herald's outbox), checks nothing and records no
  event: the least a drain through a provider can do.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import transaction
from django.test import override_settings

from bench.db import analyze, wipe
from bench.harness import REPEAT, Figure, Workload, best, measure
from bench.workloads.common import BODY, NOW, SUBJECT, Context, customers

PO_DEFAULTS = {"BACKENDS": {"default": "django.core.mail.backends.dummy.EmailBackend"}}
PO_TUNED = {**PO_DEFAULTS, "BATCH_SIZE": 1000, "LOG_LEVEL": 1}


def stage(n: int, *, now=NOW) -> None:
    """n deliveries of one running batch, due at `now`, rendered and staged by the outbox."""
    from notifications.batch import batch_workflow, customer_context
    from notifications.models import Customer, MessageTemplate, Notification, WorkflowRun
    from notifications.outbox import Recipient, stage_deliveries

    customers(n)
    run = WorkflowRun.objects.create(
        workflow=batch_workflow(), status=WorkflowRun.Status.RUNNING, started_at=now
    )
    template = MessageTemplate.objects.create(
        name="drain",
        channel="email",
        subject=SUBJECT,
        body=BODY,
        variables=["customer_name", "company_name", "account_ref", "school_year", "bid", "region"],
    )
    notification = Notification.objects.create(
        template=template, workflow_run=run, origin="bench", created_at=now
    )
    stage_deliveries(
        notification=notification,
        recipients=[
            Recipient(key=f"customer:{c.id}", address=c.email, context=customer_context(c))
            for c in Customer.objects.order_by("id")
        ],
        now=now,
        key_prefix=str(run.id),
    )


def run(ctx: Context) -> Workload:
    from notifications.dispatch import dispatch_due
    from notifications.models import Delivery

    n = ctx.size(10_000)
    result = Workload(2, "Dispatch drain", f"{n:,} due emails, provider answers at once")
    wipe()
    stage(n)
    analyze()  # statistics after the bulk load, as autovacuum gives a production database
    due = list(Delivery.objects.order_by("id").values())

    heralds, floors = [], []
    post_office: dict[str, list] = {"defaults": [], "tuned": []}
    for repeat in range(REPEAT):
        if repeat:
            _reset(due)
        with measure("Herald: dispatch_due until empty", n, "messages") as herald:
            report = dispatch_due(now=NOW)
        assert report.sent == n, report
        heralds.append(herald)
        for label, config in (("defaults", PO_DEFAULTS), ("tuned", PO_TUNED)):
            _post_office_queue(due)
            with override_settings(POST_OFFICE=config):
                post_office[label].append(_post_office_drain(n, label, config))
        _reset(due)
        floors.append(_floor(n))
    herald = result.herald = best(heralds)
    floor = best(floors)
    post_office = {label: best(figures) for label, figures in post_office.items()}

    result.compare(post_office["defaults"], at_least=3.0)
    result.compare(post_office["tuned"], at_least=2.0)
    result.compare(floor, at_least=0.5)
    result.check("peak memory", "≤ 200 MB", f"{herald.peak_mb:.0f} MB", herald.peak_mb <= 200)
    result.notes.append(
        "peak memory is the whole process's resident size while draining (the bench's own "
        f"data included); the drain itself added {herald.delta_mb:.0f} MB"
    )
    return result


def _reset(rows: list[dict]) -> None:
    """The outbox as it was before the drain (its batch running again, its sender's pace
    cursor back where it was: otherwise the next drain, at the same `now`, waits for the
    slots the last one reserved)."""
    from notifications.models import Delivery, DeliveryEvent, Sender, WorkflowRun

    WorkflowRun.objects.update(status=WorkflowRun.Status.RUNNING, completed_at=None)
    Sender.objects.update(next_slot_at=None, paused_until=None)
    DeliveryEvent.objects.all()._raw_delete("default")
    Delivery.objects.all()._raw_delete("default")
    Delivery.objects.bulk_create([Delivery(**row) for row in rows], batch_size=1000)
    analyze()


def _post_office_queue(rows: list[dict]) -> None:
    """The same emails in post-office's queue, as `mail.send_many` leaves them."""
    from post_office.models import STATUS, Email, Log

    Log.objects.all()._raw_delete("default")
    Email.objects.all()._raw_delete("default")
    Email.objects.bulk_create(
        [
            Email(
                from_email=settings.DEFAULT_FROM_EMAIL,
                to=[row["address"]],
                subject=row["subject"],
                message=row["body"],
                html_message=row["html_body"],
                headers=row["payload"].get("headers"),
                status=STATUS.queued,
            )
            for row in rows
        ],
        batch_size=1000,
    )
    analyze()


def _post_office_drain(n: int, label: str, config: dict) -> Figure:
    from post_office import mail
    from post_office.models import STATUS, Email

    size = config.get("BATCH_SIZE", 100)
    level = config.get("LOG_LEVEL", 2)
    with measure(
        f"post-office send_queued, {label} (batch {size}, log {level})", n, "messages"
    ) as figure:
        while mail.get_queued().exists():
            mail.send_queued()
    assert Email.objects.filter(status=STATUS.sent).count() == n
    return figure


def _floor(n: int) -> Figure:
    from notifications.models import Delivery

    backend = get_connection()
    sent = 0
    with measure("floor: raw claim → provider → mark loop", n, "messages") as figure:
        while True:
            token = uuid.uuid4()
            with transaction.atomic():
                ids = list(
                    Delivery.objects.filter(status="scheduled", send_at__lte=NOW)
                    .order_by("send_at", "id")
                    .values_list("id", flat=True)[:1000]
                )
                if not ids:
                    break
                Delivery.objects.filter(id__in=ids, status="scheduled").update(
                    status="sending", claim_token=token, claimed_at=NOW
                )
            for address, subject, body, html, payload in Delivery.objects.filter(
                id__in=ids, claim_token=token
            ).values_list("address", "subject", "body", "html_body", "payload"):
                message = EmailMultiAlternatives(
                    subject,
                    body,
                    settings.DEFAULT_FROM_EMAIL,
                    [address],
                    headers=payload.get("headers"),
                )
                message.attach_alternative(html, "text/html")
                sent += backend.send_messages([message])
            Delivery.objects.filter(id__in=ids).update(status="sent", sent_at=NOW)
    assert sent == n
    return figure
