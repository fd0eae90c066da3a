"""WhatsApp through Meta's Cloud API, template messages only.

Business-initiated WhatsApp messages must use an approved template, so that is the only
kind we send. Meta reports most failures as HTTP 400 with its own error code, including
some that are really throttling; those codes are retried, the rest are permanent.
"""

from __future__ import annotations

import requests
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

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

# Meta error codes that mean "not now" rather than "never": rate and pair-rate limits,
# spam-rate limiting, and temporary service unavailability.
# https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes
TRANSIENT_META_CODES = {2, 4, 80007, 130429, 131000, 131048, 131056, 133004, 133016}


def template_request(message: OutgoingMessage) -> dict:
    """The Cloud API body for a template message; shared with the recording channel so
    development refuses exactly what production would build wrongly."""
    payload = message.payload
    if not payload.get("template"):
        raise PermanentError("WhatsApp message has no template", code="missing_template")
    components: list[dict] = []
    if payload.get("header_image"):
        image = {"type": "image", "image": {"link": payload["header_image"]}}
        components.append({"type": "header", "parameters": [image]})
    if payload.get("parameters"):
        texts = [{"type": "text", "text": str(p)} for p in payload["parameters"]]
        components.append({"type": "body", "parameters": texts})
    if payload.get("button_url_suffix"):
        suffix = [{"type": "text", "text": payload["button_url_suffix"]}]
        components.append({"type": "button", "sub_type": "url", "index": "0", "parameters": suffix})
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "".join(ch for ch in message.to if ch in "0123456789"),
        "type": "template",
        "template": {
            "name": payload["template"],
            "language": {"code": payload.get("language") or "en"},
            "components": components,
        },
    }


class CloudAPIWhatsAppChannel(Channel):
    name = "whatsapp"
    provider = "whatsapp_cloud"

    def __init__(self) -> None:
        self.token = getattr(settings, "WHATSAPP_ACCESS_TOKEN", "")
        if not self.token:
            raise ImproperlyConfigured("WHATSAPP_ACCESS_TOKEN must be set to send WhatsApp")
        self.phone_number_id = getattr(settings, "WHATSAPP_PHONE_NUMBER_ID", "")
        if not self.phone_number_id:
            raise ImproperlyConfigured("WHATSAPP_PHONE_NUMBER_ID must be set to send WhatsApp")

    def send(self, message: OutgoingMessage) -> str:
        body = template_request(message)
        phone_number_id = message.payload.get("phone_number_id") or self.phone_number_id
        url = f"{settings.WHATSAPP_GRAPH_URL.rstrip('/')}/{phone_number_id}/messages"
        try:
            response = requests.post(
                url,
                json=body,
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=settings.PROVIDER_TIMEOUT_SECONDS,
            )
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise network_error(exc, "WhatsApp") from exc
        if response.status_code >= 400:
            raise classify_meta_error(response)
        try:
            return str(response.json()["messages"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise TransientError(
                f"WhatsApp malformed response: {response.text[:200]!r}", code="malformed_response"
            ) from exc


def classify_meta_error(response: requests.Response) -> ChannelError:
    """Meta's error code wins over the HTTP status: it marks throttling sent as a 400."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    meta_code = error.get("code")
    text = f"WhatsApp HTTP {response.status_code}"
    if meta_code is not None:
        text += f", Meta error {meta_code}: {error.get('message', '')}"
        details = (error.get("error_data") or {}).get("details")
        if details:
            text += f" ({details})"
    code = str(meta_code) if meta_code is not None else ""
    retry_after = parse_retry_after(response.headers)
    if code.isascii() and code.isdigit() and int(code) in TRANSIENT_META_CODES:
        return TransientError(text, retry_after=retry_after, code=code)
    return http_status_error(response.status_code, text, code=code, retry_after=retry_after)
