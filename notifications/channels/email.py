"""Email through Django's mail API, so settings.EMAIL_BACKEND alone picks the ESP.

Anymail backends and plain SMTP fail in different vocabularies; both are translated here
into transient/permanent so dispatch never has to know which one is configured.
"""

from __future__ import annotations

import mimetypes
import smtplib
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path

import requests
from anymail.backends.base_requests import AnymailRequestsBackend
from anymail.exceptions import (
    AnymailAPIError,
    AnymailError,
    AnymailInvalidAddress,
    AnymailRecipientsRefused,
)
from django.conf import settings
from django.core.mail import BadHeaderError, EmailMultiAlternatives, get_connection, make_msgid
from django.utils.module_loading import import_string

from .base import (
    Channel,
    ChannelError,
    OutgoingMessage,
    PermanentError,
    TransientError,
    http_status_error,
    network_error,
    parse_retry_after,
)
from .recording import EmailBackend as RecordingBackend


def email_provider() -> str:
    """What email deliveries name as their provider (in "accepted by …", the breaker's
    key): "recording" for the development backend, which sends nothing and keeps each
    message in Admin → Recorded messages, as the SMS and WhatsApp recording channels are
    named; "anymail" otherwise (the ESP that settings.EMAIL_BACKEND picks)."""
    return "recording" if _records(settings.EMAIL_BACKEND) else "anymail"


@lru_cache
def _records(backend_path: str) -> bool:
    """Whether this backend (or one built on it) is the recording one."""
    backend = import_string(backend_path)
    return isinstance(backend, type) and issubclass(backend, RecordingBackend)


class EmailChannel(Channel):
    name = "email"

    @property
    def provider(self) -> str:
        return email_provider()

    def __init__(self) -> None:
        self._backend = None

    def send(self, message: OutgoingMessage) -> str:
        email = self.build(message)
        if not email.recipients():
            # Django would hand it to no backend and return 0 (an address emptied after
            # staging): nothing goes, so nothing may be reported sent. (Send's own return
            # is not read: a queueing backend, post-office's, returns 0 for what it sends.)
            raise PermanentError(
                f"no recipient address ({message.to!r}): nothing was handed to the provider",
                code="no_recipient",
            )
        email.connection = self._connection()
        try:
            email.send(fail_silently=False)
        except Exception as exc:
            error = classify_email_error(exc)
            if error is None:
                raise
            raise error from exc
        status = getattr(email, "anymail_status", None)
        message_id = getattr(status, "message_id", None)
        if message_id is not None:
            if isinstance(message_id, set):  # one id per recipient; we only ever send one
                return ",".join(sorted(str(m) for m in message_id))
            return str(message_id)
        return email.extra_headers["Message-ID"]

    def _connection(self):
        """The mail backend, one for the channel's life (one dispatch round). Anymail's HTTP
        backends are opened here and stay open: their requests session reuses its TLS
        connection, where a backend per message shook hands with the ESP every time. Other
        backends are not opened, so each send opens and closes its own connection as
        Django's mail API does (SMTP among them, whose idle connection a server may drop
        unnoticed); only the backend object is kept (one per message was 2-3 % of a drain)."""
        if self._backend is None:
            self._backend = get_connection(fail_silently=False)
            if isinstance(self._backend, AnymailRequestsBackend):
                self._backend.open()
        return self._backend

    def close(self) -> None:
        backend, self._backend = self._backend, None
        if isinstance(backend, AnymailRequestsBackend):  # the ones opened above
            backend.close()

    def build(self, message: OutgoingMessage) -> EmailMultiAlternatives:
        payload = message.payload
        from_email = payload.get("from_email") or settings.DEFAULT_FROM_EMAIL
        # Our own Message-ID, so non-anymail backends (SMTP) still yield a known id.
        headers = {
            **payload.get("headers", {}),
            "Message-ID": make_msgid(domain=_domain_of(from_email)),
        }
        email = EmailMultiAlternatives(
            message.subject, message.body, from_email, [message.to], headers=headers
        )
        if message.html_body:
            email.attach_alternative(message.html_body, "text/html")
        for attachment in payload.get("attachments", []):
            path = Path(attachment["path"])
            filename = attachment.get("filename") or path.name
            mimetype = attachment.get("mimetype") or mimetypes.guess_type(filename)[0]
            try:
                content = path.read_bytes()
            except OSError as exc:
                # A missing file will still be missing on the next attempt.
                raise PermanentError(
                    f"attachment {filename!r} unreadable: {exc}", code="attachment_unreadable"
                ) from exc
            email.attach(filename, content, mimetype)
        if payload.get("tags"):
            email.tags = list(payload["tags"])
        email.metadata = {**payload.get("metadata", {}), "idempotency_key": message.idempotency_key}
        return email


@lru_cache(maxsize=64)
def _domain_of(from_email: str) -> str | None:
    """The sender's domain for Message-IDs (parsed once per sender: a parse per message was
    a tenth of a drain's time)."""
    return parseaddr(from_email)[1].rpartition("@")[2] or None


NO_MAILBOX_STATUSES = {"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"}


def _enhanced_status(reply) -> str:
    """The RFC 3463 status at the start of an SMTP reply (b"5.1.1 no such user" -> "5.1.1")."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return text.strip().split(" ", 1)[0]


def classify_email_error(exc: Exception) -> ChannelError | None:
    """Map anymail/SMTP/socket failures to transient or permanent; None if not a send error.

    Order matters: anymail's requests errors and every smtplib error are also OSErrors.
    """
    if isinstance(exc, AnymailRecipientsRefused):  # the ESP: invalid, bounced or suppressed
        return PermanentError(
            f"recipient refused: {exc}", code="recipient_refused", suppress="bounce"
        )
    if isinstance(exc, AnymailInvalidAddress):  # not an address: correct it, nothing to suppress
        return PermanentError(f"recipient refused: {exc}", code="recipient_refused")
    if isinstance(exc, AnymailAPIError):
        if isinstance(exc, requests.Timeout | requests.ConnectionError):
            return network_error(exc, "ESP")
        status = exc.status_code
        if status is None:  # no answer at all: nothing was taken
            return TransientError(f"ESP error: {exc}")
        if status < 400:  # the ESP said OK in a body we cannot read: it may have the message
            return TransientError(
                f"ESP answered {status} unreadably: {exc}", code="malformed_response"
            )
        headers = getattr(exc.response, "headers", None)
        return http_status_error(
            status, f"ESP error: {exc}", retry_after=parse_retry_after(headers)
        )
    if isinstance(exc, BadHeaderError):  # a newline in a rendered subject or header
        return PermanentError(f"invalid header: {exc}", code="bad_header")
    if isinstance(exc, AnymailError):  # unsupported feature, unserializable data: ours to fix
        return PermanentError(f"ESP cannot send this message: {exc}")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        if codes and all(400 <= code < 500 for code in codes):  # greylisting, mailbox busy
            return TransientError(f"recipient deferred: {exc.recipients}", code=str(codes[0]))
        # The destination mailbox or its domain does not exist or cannot be (RFC 3463: 5.1.1
        # bad mailbox, 5.1.2 bad system, 5.1.3 bad syntax, 5.1.6 moved, 5.1.10 null MX).
        # Other refusals may be about this message, or about the sender (5.1.7, 5.1.8, or a
        # "Sender address rejected" a server gives at RCPT): the address is left alone.
        no_mailbox = codes and all(
            code >= 500
            and _enhanced_status(reply) in NO_MAILBOX_STATUSES
            and b"sender"
            not in (reply if isinstance(reply, bytes) else str(reply).encode()).lower()
            for code, reply in exc.recipients.values()
        )
        return PermanentError(
            f"recipient refused: {exc.recipients}",
            code=str(codes[0] if codes else ""),
            suppress="bounce" if no_mailbox else "",
        )
    if isinstance(exc, smtplib.SMTPResponseException):
        code = str(exc.smtp_code)
        if 400 <= exc.smtp_code < 500:
            return TransientError(f"SMTP {code}: {exc.smtp_error!r}", code=code)
        return PermanentError(f"SMTP {code}: {exc.smtp_error!r}", code=code)
    if isinstance(exc, smtplib.SMTPException | OSError):  # disconnected, refused, timed out
        if _during_data(exc):  # the message went out; its "250 queued" did not come back
            return TransientError(
                f"mail server did not answer after the message went out: {exc}",
                code="no_answer",
            )
        return TransientError(f"mail server unreachable: {exc}", code="connection_error")
    return None


def _during_data(exc: Exception) -> bool:
    """Whether an SMTP failure happened inside the DATA command, once the message itself
    was being handed over: before it (connecting, greeting, MAIL FROM, RCPT TO) the server
    has nothing to deliver, and sending again is safe."""
    trace = exc.__traceback__
    while trace is not None:
        frame = trace.tb_frame
        if frame.f_code.co_name == "data" and frame.f_globals.get("__name__") == "smtplib":
            return True
        trace = trace.tb_next
    return False
