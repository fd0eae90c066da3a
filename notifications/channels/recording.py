"""Development backends: record what would have been sent, so staff can read it in the admin.

They refuse what a real provider would refuse (a malformed number, a template-less WhatsApp
message, an invalid email address), so a flow that works against them does not first fail
in production.

To try retries, fallbacks and the circuit breakers without a provider, the email backend
fails on purpose for addresses whose local part ends in `+fail` or `+reject`, the way a
mail server does (see `simulated_refusal`), and the SMS and WhatsApp channels for three of
Twilio's test numbers (see `simulated_phone_refusal`); nothing is recorded for them.
"""

from __future__ import annotations

import smtplib
import uuid
from email.utils import parseaddr

import phonenumbers
from anymail.exceptions import AnymailInvalidAddress
from django.core.exceptions import ValidationError
from django.core.mail.backends.base import BaseEmailBackend
from django.core.validators import validate_email

from .base import Channel, ChannelError, OutgoingMessage, PermanentError, TransientError
from .whatsapp import template_request


def recorded_id() -> str:
    return f"rec-{uuid.uuid4().hex}"


def check_e164(number: str) -> None:
    """Twilio and Meta both reject numbers that are not valid E.164; so do we."""
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as exc:
        raise PermanentError(
            f"{number!r} is not a phone number: {exc}", code="invalid_number"
        ) from exc
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if not phonenumbers.is_valid_number(parsed) or e164 != number:
        raise PermanentError(f"{number!r} is not a valid E.164 number", code="invalid_number")


# Local-part endings that make the recording email backend fail as a mail server would:
# the SMTP reply it gives, and what EmailChannel makes of it.
SIMULATED_REFUSALS = {
    "+fail": (451, b"4.3.0 Simulated temporary failure (+fail address): try again later"),
    "+reject": (550, b"5.1.1 Simulated permanent failure (+reject address): no such user"),
}


def simulated_refusal(address: str) -> tuple[int, bytes] | None:
    """The SMTP reply for an address whose local part ends in `+fail` (451: transient, so
    dispatch retries it and then gives up; five in a row trip the batch and provider
    breakers) or `+reject` (550: permanent, failed at once), e.g. ana+fail@example.org;
    None for every other address. Case does not matter."""
    local = address.rpartition("@")[0].lower()
    for ending, reply in SIMULATED_REFUSALS.items():
        if local.endswith(ending):
            return reply
    return None


# Twilio's magic test numbers (500-555-xxxx: never a subscriber's), refused as the providers
# would refuse a real number: Twilio's own answers to its test credentials for the first two,
# a busy provider (HTTP 503, tried again later) for the third.
SIMULATED_PHONE_REFUSALS = {
    "+15005550001": (False, "21211", "invalid 'To' number"),
    "+15005550009": (False, "21614", "'To' number is not a mobile number"),
    "+15005550008": (True, "503", "provider busy, try again later"),
}


def simulated_phone_refusal(channel: str, number: str) -> ChannelError | None:
    """The error for one of Twilio's test numbers: +15005550001 (invalid number) and
    +15005550009 (not a mobile) fail at once (and dispatch suppresses them), +15005550008
    is refused for now (retried, then failed; five in a row trip the provider breaker);
    None for every other number."""
    if number not in SIMULATED_PHONE_REFUSALS:
        return None
    transient, code, reason = SIMULATED_PHONE_REFUSALS[number]
    kind = "temporary" if transient else "permanent"
    message = f"Simulated {kind} {channel} failure ({number}, code {code}): {reason}"
    if transient:
        return TransientError(message, code=code)
    return PermanentError(message, code=code, suppress="bounce")  # as Twilio's codes do


class EmailBackend(BaseEmailBackend):
    """A Django email backend writing one RecordedMessage per message instead of sending."""

    def send_messages(self, email_messages) -> int:
        from notifications.models import RecordedMessage

        sent = 0
        for message in email_messages:
            try:
                addresses = [parseaddr(recipient)[1] for recipient in message.recipients()]
                for address in addresses:
                    validate_email(address)
            except ValidationError as exc:
                if self.fail_silently:
                    continue
                # The error an anymail ESP raises, so EmailChannel classifies it the same way.
                raise AnymailInvalidAddress(f"invalid recipient in {message.recipients()}") from exc
            refused = {a: reply for a in addresses if (reply := simulated_refusal(a))}
            if refused and len(refused) == len(addresses):
                if self.fail_silently:
                    continue
                # What smtplib raises when the server refuses every recipient (RCPT TO); when
                # it takes some, Django's SMTP backend sends to those and says nothing.
                raise smtplib.SMTPRecipientsRefused(refused)
            accepted = [r for r in message.recipients() if parseaddr(r)[1] not in refused]
            html = next(
                (content for content, mimetype in message.alternatives if mimetype == "text/html"),
                "",
            )
            attachments = [
                a.get_filename() if hasattr(a, "get_filename") else a[0]
                for a in message.attachments
            ]
            provider_id = recorded_id()
            message.extra_headers["X-Recorded-Id"] = provider_id
            RecordedMessage.objects.create(
                channel="email",
                to=", ".join(accepted),
                subject=message.subject,
                body=message.body,
                html_body=html,
                payload={
                    "headers": dict(message.extra_headers),
                    "attachments": attachments,
                    # anymail's metadata carries the delivery's idempotency key.
                    "metadata": dict(getattr(message, "metadata", None) or {}),
                },
                provider_message_id=provider_id,
            )
            sent += 1
        return sent


class SMSChannel(Channel):
    name = "sms"
    provider = "recording"

    def send(self, message: OutgoingMessage) -> str:
        check_e164(message.to)
        if refusal := simulated_phone_refusal(self.name, message.to):
            raise refusal
        if not message.body:
            raise PermanentError("SMS body is empty", code="empty_body")  # Twilio 21602
        return record(self.name, message)


class WhatsAppChannel(Channel):
    name = "whatsapp"
    provider = "recording"

    def send(self, message: OutgoingMessage) -> str:
        check_e164(message.to)
        template_request(message)  # raises for what the Cloud API would refuse to build
        if refusal := simulated_phone_refusal(self.name, message.to):
            raise refusal
        return record(self.name, message)


def record(channel: str, message: OutgoingMessage) -> str:
    from notifications.models import RecordedMessage

    provider_id = recorded_id()
    RecordedMessage.objects.create(
        channel=channel,
        to=message.to,
        subject=message.subject,
        body=message.body,
        html_body=message.html_body,
        payload=message.payload,
        provider_message_id=provider_id,
    )
    return provider_id
