"""Putting deliveries in the outbox: one row per recipient, rendered from a template compiled
once, unique by idempotency key, then a "look now" hint to the dispatcher after commit."""

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from django.core.cache import cache
from django.db import transaction

from notifications.bulk import insert_rows
from notifications.models import Channel, Delivery, Notification, Workflow
from notifications.pacing import sender_key
from notifications.templating import compile_template
from notifications.unsubscribe import list_unsubscribe_headers, unsubscribe_urls

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipient:
    key: str  # e.g. customer:42
    address: str
    context: Mapping = field(default_factory=dict)
    channel: str = ""  # "" = the template's channel
    fallback_channel: str = ""  # where to go when this channel cannot (e.g. "sms")
    fallback_address: str = ""
    # Text a person already reviewed (subject, body): sent as approved, not re-rendered.
    approved_text: tuple[str, str] | None = None
    idempotency_key: str = ""  # "" = <key_prefix>:<key>


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_seconds: float = 2.0
    max_seconds: float = 30.0

    @classmethod
    def of(cls, workflow: Workflow | None) -> "RetryPolicy":
        if workflow is None:
            return cls()
        return cls(
            workflow.retry_max_attempts, workflow.retry_base_seconds, workflow.retry_max_seconds
        )


def stage_deliveries(
    *,
    notification: Notification,
    recipients: Iterable[Recipient],
    now: datetime,
    key_prefix: str,
    send_at: datetime | None = None,
    expires_at: datetime | None = None,
    policy: RetryPolicy | None = None,
    payload: Mapping | None = None,
    unsubscribe: bool = True,
    context_key: str = "",
) -> int:
    """Render and insert one Delivery per recipient; returns how many rows are new.

    The idempotency key is `<key_prefix>:<recipient key>`; a recipient already staged under
    that key is left as it is (a duplicate trigger no-ops). Email carries a signed one-click
    unsubscribe link (RFC 8058 headers and a footer link) unless `unsubscribe` is False.
    """
    compiled = compile_template(notification.template)
    policy = policy or RetryPolicy.of(
        notification.workflow_run.workflow if notification.workflow_run else None
    )
    base_payload = dict(payload or {})
    if notification.template.whatsapp_template:
        base_payload.setdefault("template", notification.template.whatsapp_template)
    rows = []
    workflow_run_id = notification.workflow_run_id
    unsubscribe_url = unsubscribe_urls() if unsubscribe else None
    for recipient in recipients:
        channel = recipient.channel or compiled.channel
        row_payload = dict(base_payload)
        layout = {}
        if channel == Channel.EMAIL and unsubscribe:
            # The footer links the same signed URL the headers carry: signed once.
            layout["unsubscribe_url"] = url = unsubscribe_url(recipient.address)
            headers = list_unsubscribe_headers(url)
            row_payload["headers"] = {**row_payload.get("headers", {}), **headers}
        if recipient.approved_text is None or "template" in row_payload:
            context = {**notification.context, **recipient.context}
        if recipient.approved_text is not None:
            rendered = compiled.wrap(*recipient.approved_text, layout_context=layout)
        else:
            rendered = compiled.render(context, layout_context=layout)
        if "template" in row_payload:
            row_payload.setdefault(
                "parameters", [str(context.get(v, "")) for v in compiled.variables]
            )
        rows.append(
            {
                "notification_id": notification.id,
                "workflow_run_id": workflow_run_id,
                "recipient_key": recipient.key,
                "channel": channel,
                "message_type": notification.message_type,
                "context_key": context_key,
                "fallback_channel": recipient.fallback_channel,
                "fallback_address": recipient.fallback_address,
                "sender": sender_key(channel, row_payload),
                "address": recipient.address,
                "subject": rendered.subject,
                "body": rendered.body,
                "html_body": rendered.html_body,
                "payload": row_payload,
                "idempotency_key": recipient.idempotency_key or f"{key_prefix}:{recipient.key}",
                "send_at": send_at or now,
                "expires_at": expires_at,
                "max_attempts": policy.max_attempts,
                "retry_base_seconds": policy.base_seconds,
                "retry_max_seconds": policy.max_seconds,
                "created_at": now,
                "updated_at": now,
            }
        )
    # A key already staged (a duplicate trigger, a second approval) is skipped by the
    # database, and not counted.
    created = insert_rows(Delivery, rows, ignore_conflicts=True)
    if created:
        kick_dispatch_on_commit()
    return created


def kick_dispatch_on_commit() -> None:
    transaction.on_commit(kick_dispatch)


# At most one "look now" a second from a process, and one more a second later for what was
# staged meanwhile (in Django's cache: each process's own unless CACHE_URL is shared).
_KICK_KEY = "herald:dispatch-kick"
_KICK_GAP_SECONDS = 1


def kick_dispatch() -> None:
    """Ask a worker to look at the outbox now. Only a hint: the every-minute sweep finds the
    rows anyway, so a broker that is down delays the send but loses nothing. Kicks closer
    than a second are merged: staging deliveries one call at a time (144 reminders) sent
    144 kicks, each a dispatch run that found nothing more to do."""
    from notifications.tasks import dispatch_due_task

    try:
        first = cache.add(_KICK_KEY, 1, timeout=_KICK_GAP_SECONDS)
        trailing = not first and cache.add(f"{_KICK_KEY}:next", 1, timeout=_KICK_GAP_SECONDS)
    except Exception as error:  # a shared cache that is down: kick, unmerged
        logger.warning("could not merge dispatcher kicks (%s)", error)
        first, trailing = True, False
    try:
        if first:
            dispatch_due_task.delay()
        elif trailing:
            dispatch_due_task.apply_async(countdown=_KICK_GAP_SECONDS)
    except Exception as error:  # the broker is down; the beat sweep will find the rows
        logger.warning("could not kick the dispatcher (%s); the sweep will send", error)
