"""SMS through Twilio's Messages API.

Twilio answers most refusals with an HTTP 400 and a numeric code; the codes that mean
"this number will never take this message" are permanent so dispatch stops retrying and
can fall back or surface the address, while throttling and outages are retried.
"""

from __future__ import annotations

import requests
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from .base import (
    Channel,
    ChannelError,
    OutgoingMessage,
    PermanentError,
    http_status_error,
    network_error,
)

# Refusals about the recipient itself; retrying cannot change the answer.
PERMANENT_CODES = {
    21211: "invalid 'To' number",
    21408: "region not enabled for this account",
    21610: "recipient replied STOP (unsubscribed)",
    21612: "'To' number not reachable from this sender",
    21614: "'To' number is not a mobile number",
}
# Of those, the ones about the number itself, whoever sends: it goes on the suppression list.
SUPPRESSING_CODES = {21211: "bounce", 21610: "unsubscribe", 21614: "bounce"}


class TwilioSMSChannel(Channel):
    name = "sms"
    provider = "twilio"

    def __init__(self) -> None:
        # Checked once here so a misconfigured deployment fails on the first send attempt
        # with the setting's name instead of a 401 from Twilio.
        for setting in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
            if not getattr(settings, setting, ""):
                raise ImproperlyConfigured(f"{setting} must be set to send SMS through Twilio")
        self.from_number = getattr(settings, "TWILIO_FROM_NUMBER", "")
        self.messaging_service_sid = getattr(settings, "TWILIO_MESSAGING_SERVICE_SID", "")
        if not (self.from_number or self.messaging_service_sid):
            raise ImproperlyConfigured(
                "TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID must be set to send SMS"
            )
        self.client = Client(
            settings.TWILIO_ACCOUNT_SID,
            settings.TWILIO_AUTH_TOKEN,
            http_client=TwilioHttpClient(timeout=settings.PROVIDER_TIMEOUT_SECONDS),
        )

    def send(self, message: OutgoingMessage) -> str:
        params: dict[str, str] = {"to": message.to, "body": message.body}
        if message.payload.get("from"):
            params["from_"] = message.payload["from"]
        elif self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        else:
            params["from_"] = self.from_number
        if message.status_callback:
            params["status_callback"] = message.status_callback
        if message.payload.get("validity_period"):
            # Twilio drops the message rather than deliver it after this many seconds.
            params["validity_period"] = int(message.payload["validity_period"])
        try:
            return self.client.messages.create(**params).sid
        except (TwilioException, requests.RequestException) as exc:
            raise classify_twilio_error(exc) from exc


def classify_twilio_error(exc: Exception) -> ChannelError:
    """Twilio's numeric code first (it is the precise reason), then the HTTP status."""
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    detail = getattr(exc, "msg", "") or getattr(exc, "detail", "") or ""
    if code in PERMANENT_CODES:
        return PermanentError(
            f"Twilio {code}: {PERMANENT_CODES[code]} ({detail})",
            code=str(code),
            suppress=SUPPRESSING_CODES.get(code, ""),
        )
    if status is not None:
        return http_status_error(
            int(status), f"Twilio HTTP {status}: {detail}", code=str(code or "")
        )
    # twilio-python lets requests errors through, or wraps them; either way the network.
    cause = exc if isinstance(exc, requests.RequestException) else exc.__cause__ or exc.__context__
    if isinstance(cause, requests.Timeout | requests.ConnectionError):
        return network_error(cause, "Twilio")
    return PermanentError(f"Twilio error: {exc}")
