"""Provider webhooks: thin doors that check who is calling, translate the provider's
vocabulary into ours and hand each report to tracking.apply_provider_event.

A request that cannot prove it comes from the provider is refused before anything is read
into the database; a request whose body we cannot understand is answered 400 and changes
nothing. Email arrives through anymail's own views (basic auth) and its `tracking` signal;
they are refused outright while no ANYMAIL_WEBHOOK_SECRET is set, as Twilio's and Meta's are
without their secrets (anymail itself would only warn and accept anyone).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps

from anymail.exceptions import (
    AnymailAPIError,
    AnymailConfigurationError,
    AnymailImproperlyInstalled,
    AnymailWebhookValidationFailure,
)
from anymail.signals import AnymailTrackingEvent, tracking
from anymail.utils import get_anymail_setting, get_request_basic_auth
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.dispatch import receiver
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseForbidden,
)
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.utils.log import log_response
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST
from twilio.request_validator import RequestValidator

from notifications.events import record_event
from notifications.models import DeliveryEvent, Suppression
from notifications.tracking import receive_provider_events

logger = logging.getLogger(__name__)
Kind = DeliveryEvent.Kind

# --- anymail (email) ------------------------------------------------------------------------

# anymail's normalized event types → our kinds. Types not listed (autoresponded, subscribed,
# unknown, inbound) say nothing about the delivery and are ignored.
ANYMAIL_KINDS = {
    "queued": Kind.QUEUED,
    "sent": Kind.SENT,
    "rejected": Kind.FAILED,
    "failed": Kind.FAILED,
    "bounced": Kind.BOUNCED,
    "deferred": Kind.DEFERRED,
    "delivered": Kind.DELIVERED,
    "opened": Kind.OPENED,
    "clicked": Kind.CLICKED,
    "complained": Kind.COMPLAINED,
    "unsubscribed": Kind.UNSUBSCRIBED,
}
# The ESP refused to send because of the address's history: that history is ours to keep.
REJECT_SUPPRESSIONS = {
    "bounced": Suppression.Reason.BOUNCE,
    "spam": Suppression.Reason.COMPLAINT,
    "unsubscribed": Suppression.Reason.UNSUBSCRIBE,
}


ANYMAIL_NO_SECRET = (
    "email webhooks are refused: ANYMAIL_WEBHOOK_SECRET is not set (give it as user:password "
    "and the same credentials to the ESP's webhook URL)"
)
TWILIO_NO_SECRET = (
    "Twilio status callbacks are refused: TWILIO_AUTH_TOKEN is not set (the account's auth "
    "token, which Twilio signs its callbacks with)"
)
WHATSAPP_NO_SECRET = (
    "WhatsApp webhooks are refused: WHATSAPP_APP_SECRET is not set (the Meta app's secret, "
    "which Meta signs its webhooks with)"
)


def _unreadable_reason(error: Exception) -> str:
    """Why anymail could not read an email webhook's body, for the sender: the decoder's
    message, or what the ESP's parser tripped on (its error type alone said little)."""
    detail = str(error).strip() or type(error).__name__
    if isinstance(error, RecursionError):
        return "not JSON a server can read (nested too deeply)"
    if isinstance(error, json.JSONDecodeError | UnicodeDecodeError):
        return f"not JSON ({detail})"[:300]
    return f"not the shape this ESP's webhook sends ({type(error).__name__}: {detail})"[:300]


def _raised_reading_the_body(error: Exception) -> bool:
    """Whether anymail's parsing of the request raised `error` (the JSON decoder, or anymail's
    own webhook code taking the body apart), rather than Herald's receiver, a signal
    receiver, or a call anymail makes (boto confirming an SNS subscription): only an
    unreadable body is the sender's fault (400, not sent again); the rest stays a 500, which
    ESPs retry."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    module = frame.tb_frame.f_globals.get("__name__", "") if frame else ""
    return module.split(".")[0] == "json" or module.startswith("anymail.webhooks")


class TrackingFailed(Exception):
    """Herald could not record an email tracking event it read (answered 500, so the ESP
    sends it again), as opposed to a body that cannot be read at all (400)."""


def requires_anymail_secret(view):
    """anymail's webhook view behind Herald's door, which answers every refusal in plain
    text, as the Twilio and WhatsApp webhooks do, instead of letting anymail's exceptions
    reach Django (a 400 with the debug page under DEBUG, and a traceback at ERROR in
    `django.security`):

    - no webhook secret configured: 403 before anything is read. Every ESP needs one, also
      those that sign their webhooks as well (Mailgun, Mandrill, Postal).
    - a POST without the secret's basic auth: 401 with `WWW-Authenticate: Basic`, the
      challenge ESPs expect (Amazon SNS sends credentials only after one), before the body
      is read.
    - any other check anymail makes (an ESP signature, SNS headers that do not match the
      body): 403 with anymail's reason.
    - a body that cannot be read (not JSON, not the ESP's shape): 400 with the reason.
    - a setting the ESP's view needs is missing (Mailgun's webhook signing key, boto3 for
      SES): 503 naming the environment variable to set, logged once at WARNING without a
      traceback. A 5xx on purpose: it is what every ESP retries (Mailgun for 8 hours,
      SendGrid for 24, SNS as its delivery policy says), while some drop an event answered
      with a 4xx for good; so the events wait at the ESP, within its retry window, until
      the setting is given. 503 rather than 500 says it is this server's state, not a
      crash. The caller has passed the basic auth by then, so naming the setting tells no
      stranger anything.
    """

    @wraps(view)
    def guarded(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        secrets = anymail_webhook_secrets()
        if not secrets:
            logger.warning("refused an email webhook at %s: %s", request.path, ANYMAIL_NO_SECRET)
            return HttpResponseForbidden(ANYMAIL_NO_SECRET, content_type="text/plain")
        # Only POST carries events; anymail answers HEAD (an ESP checking the URL) and
        # OPTIONS without reading anything, as before.
        if request.method == "POST" and not basic_auth_ok(request, secrets):
            logger.warning(
                "refused an email webhook at %s: missing or wrong basic auth", request.path
            )
            return basic_auth_challenge()
        try:
            return view(request, *args, **kwargs)
        except AnymailWebhookValidationFailure as error:
            logger.warning("refused an email webhook at %s: %s", request.path, error)
            return HttpResponseForbidden(f"refused: {error}"[:300], content_type="text/plain")
        except AnymailConfigurationError as error:
            # Only a setting still to be given is worth the ESP's retries; anything else
            # anymail calls configuration (an inbound event posted to a tracking URL) will
            # never succeed: a 500, logged at ERROR for a person to look at.
            if isinstance(error, AnymailImproperlyInstalled) or _missing_anymail_setting(
                str(error)
            ):
                return not_configured(request, error)
            raise
        except (
            AnymailAPIError,
            ValueError,
            RecursionError,  # JSON nested deeper than the decoder goes
            TypeError,
            KeyError,
            AttributeError,
            IndexError,
        ) as error:
            if not _unreadable_body(error):
                raise  # Herald's, a library's or a setting's fault: 500, the ESP sends again
            logger.warning("unreadable email webhook at %s: %r", request.path, error)
            return HttpResponseBadRequest(
                f"unreadable body: {_unreadable_reason(error)}", content_type="text/plain"
            )

    return guarded


def not_configured(request: HttpRequest, error: AnymailConfigurationError) -> HttpResponse:
    """The 503 of requires_anymail_secret for a setting anymail could not find."""
    setting = _missing_anymail_setting(str(error))
    if setting:
        reason = f"email webhooks are not configured: {setting} is not set"
    else:
        reason = f"email webhooks are not configured: {error}"
    response = HttpResponse(
        f"{reason}; answered 503 so that the ESP sends the event again",
        status=503,
        content_type="text/plain",
    )
    # Logged here, at WARNING and without a traceback; Django would log any 5xx at ERROR.
    log_response(
        "refused an email webhook at %s: %s",
        request.path,
        reason,
        response=response,
        request=request,
        logger=logger,
        level="warning",
    )
    return response


def _missing_anymail_setting(message: str) -> str:
    """The environment variable to set, from anymail's "You must set ANYMAIL = {'KEY': ...}"
    (config/settings.py reads every ANYMAIL_<KEY> into ANYMAIL["<KEY>"]); empty when anymail
    named no setting (a package that is not installed)."""
    found = re.search(r"ANYMAIL = \{'(\w+)'", message)
    return f"ANYMAIL_{found.group(1)}" if found else ""


def anymail_webhook_secrets() -> list[str]:
    """The "user:password" strings anymail accepts, read as anymail reads them:
    ANYMAIL["WEBHOOK_SECRET"] or ANYMAIL_WEBHOOK_SECRET, one string or a list (to rotate)."""
    secret = get_anymail_setting("webhook_secret", default=None)
    if isinstance(secret, str):
        return [secret] if secret else []
    return [value for value in secret or [] if value]


def basic_auth_ok(request: HttpRequest, secrets: list[str]) -> bool:
    given = get_request_basic_auth(request)
    # any() may stop early: that tells how many secrets there are, not what any of them is.
    return given is not None and any(constant_time_compare(given, secret) for secret in secrets)


def basic_auth_challenge() -> HttpResponse:
    response = HttpResponse("missing or wrong basic auth", status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Basic realm="Herald email webhooks"'
    return response


def _unreadable_body(error: Exception) -> bool:
    """A plain AnymailAPIError is how anymail's Amazon SES view says the SNS body is not
    JSON, not a known SNS type, or carries an unreadable SES event; its subclasses are
    failed calls to a provider (an S3 download), which stay a 500 so they are retried."""
    if isinstance(error, AnymailAPIError) and type(error) is not AnymailAPIError:
        return False
    return _raised_reading_the_body(error)


@receiver(tracking, dispatch_uid="herald.anymail_tracking")
def on_anymail_tracking(sender, event: AnymailTrackingEvent, esp_name: str, **kwargs) -> None:
    """Apply one normalized anymail tracking event (any ESP) to its delivery."""
    kind = ANYMAIL_KINDS.get(event.event_type)
    if kind is None or not event.message_id:
        return
    now = timezone.now()
    try:
        receive_provider_events(
            [
                {
                    "provider": "anymail",
                    "provider_message_id": str(event.message_id),
                    "kind": kind,
                    "provider_event_id": str(event.event_id or anymail_event_key(event)),
                    "at": event.timestamp or now,
                    "data": anymail_event_data(event, esp_name),
                }
            ],
            now=now,
        )
    except Exception as error:
        raise TrackingFailed(f"{esp_name} {event.event_type} not recorded: {error}") from error


def anymail_event_key(event: AnymailTrackingEvent) -> str:
    """A stable id for ESPs that send none (Postmark deliveries and opens), so a retried
    webhook is still recognised as the same event."""
    stamp = event.timestamp.isoformat() if event.timestamp else ""
    raw = f"{event.message_id}|{event.event_type}|{stamp}"
    return "h:" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def anymail_event_data(event: AnymailTrackingEvent, esp_name: str) -> dict:
    data = {
        "esp": esp_name,
        "event_type": event.event_type,
        "recipient": event.recipient or "",
        "reject_reason": event.reject_reason or "",
        "description": event.description or "",
        "mta_response": event.mta_response or "",
        "click_url": event.click_url or "",
    }
    detail = event.description or event.mta_response
    if detail:
        data["reason"] = f"{esp_name} {event.event_type}: {detail}"[:300]
    if event.event_type == "rejected":
        data["suppress"] = REJECT_SUPPRESSIONS.get(event.reject_reason, "")
    elif event.event_type == "bounced" and _is_soft_bounce(event):
        data["suppress"] = ""
    return data


def _is_soft_bounce(event: AnymailTrackingEvent) -> bool:
    """Most ESPs report temporary failures as 'deferred'; Postmark reports them as a
    'bounced' whose Type says SoftBounce. Only hard bounces suppress the address."""
    esp_event = event.esp_event if isinstance(event.esp_event, dict) else {}
    return esp_event.get("Type") == "SoftBounce"


# --- Twilio (SMS, and WhatsApp through Twilio) ------------------------------------------------

TWILIO_KINDS = {
    "sent": Kind.SENT,
    "delivered": Kind.DELIVERED,
    "read": Kind.OPENED,
    "undelivered": Kind.FAILED,
    "failed": Kind.FAILED,
}
# Twilio 21610: the recipient replied STOP; sending again is refused (and unwelcome).
TWILIO_UNSUBSCRIBED_CODE = "21610"


@csrf_exempt
@login_not_required
@require_POST
def twilio_status(request: HttpRequest) -> HttpResponse:
    """Twilio's status callback for a message we sent (the URL dispatch gives it)."""
    if not settings.TWILIO_AUTH_TOKEN:
        return HttpResponseForbidden(TWILIO_NO_SECRET, content_type="text/plain")
    if not twilio_signature_ok(request):
        return HttpResponseForbidden("invalid Twilio signature", content_type="text/plain")
    sid = request.POST.get("MessageSid", "")
    status = request.POST.get("MessageStatus", "")
    if not sid or not status:
        return HttpResponseBadRequest(
            "MessageSid and MessageStatus are required", content_type="text/plain"
        )
    kind = TWILIO_KINDS.get(status)
    if kind is None:  # queued, accepted, sending, ...: nothing we act on
        return HttpResponse("ignored", content_type="text/plain")
    now = timezone.now()
    receive_provider_events(
        [
            {
                "provider": "twilio",
                "provider_message_id": sid,
                "kind": kind,
                "provider_event_id": f"{sid}:{status}",
                "at": now,  # Twilio's callbacks carry no event time
                "data": twilio_event_data(request.POST, status),
            }
        ],
        now=now,
    )
    return HttpResponse("received", content_type="text/plain")


def twilio_signature_ok(request: HttpRequest) -> bool:
    """Twilio signs the URL it called plus the POST fields with our auth token. The URL is
    rebuilt from SITE_URL (as dispatch built it), not from Host headers a proxy may change."""
    token = settings.TWILIO_AUTH_TOKEN
    signature = request.headers.get("X-Twilio-Signature", "")
    if not token or not signature:
        return False
    url = f"{settings.SITE_URL}{request.path_info}"
    if request.META.get("QUERY_STRING"):
        url += f"?{request.META['QUERY_STRING']}"
    return RequestValidator(token).validate(url, request.POST, signature)


def twilio_event_data(post, status: str) -> dict:
    data = {"status": status}
    code = post.get("ErrorCode", "")
    if code:
        data["error_code"] = code
        data["reason"] = f"Twilio {status} (error {code})"
        if code == TWILIO_UNSUBSCRIBED_CODE:
            data["suppress"] = Suppression.Reason.UNSUBSCRIBE
    return data


# --- WhatsApp Cloud API (Meta) ----------------------------------------------------------------

MAX_WHATSAPP_BODY = 1024 * 1024
WHATSAPP_KINDS = {
    "sent": Kind.SENT,
    "delivered": Kind.DELIVERED,
    "read": Kind.OPENED,
    "failed": Kind.FAILED,
}


class BadPayload(ValueError):
    """The body is JSON but not the shape Meta documents."""


@dataclass(frozen=True)
class WhatsAppStatus:
    message_id: str
    status: str
    at: datetime | None
    errors: list


@csrf_exempt
@login_not_required
@require_http_methods(["GET", "POST"])
def whatsapp_webhook(request: HttpRequest) -> HttpResponse:
    """Meta's webhook: GET is the subscription handshake, POST carries the updates."""
    if request.method == "GET":
        return whatsapp_handshake(request)
    return whatsapp_updates(request)


def whatsapp_handshake(request: HttpRequest) -> HttpResponse:
    expected = settings.WHATSAPP_VERIFY_TOKEN
    given = request.GET.get("hub.verify_token", "")
    if (
        request.GET.get("hub.mode") == "subscribe"
        and expected
        and constant_time_compare(given, expected)
    ):
        return HttpResponse(request.GET.get("hub.challenge", ""), content_type="text/plain")
    if not expected:
        return HttpResponseForbidden(
            "verification failed: WHATSAPP_VERIFY_TOKEN is not set (give Meta the same token)",
            content_type="text/plain",
        )
    return HttpResponseForbidden("verification failed", content_type="text/plain")


def whatsapp_updates(request: HttpRequest) -> HttpResponse:
    if _declared_length(request) > MAX_WHATSAPP_BODY:
        return HttpResponse("body too large", status=413, content_type="text/plain")
    body = request.body
    if len(body) > MAX_WHATSAPP_BODY:
        return HttpResponse("body too large", status=413, content_type="text/plain")
    if not settings.WHATSAPP_APP_SECRET:
        return HttpResponseForbidden(WHATSAPP_NO_SECRET, content_type="text/plain")
    if not meta_signature_ok(body, request.headers.get("X-Hub-Signature-256", "")):
        return HttpResponseForbidden("invalid signature", content_type="text/plain")
    try:
        statuses, templates = parse_whatsapp_payload(json.loads(body))
    except ValueError as error:  # not JSON, not UTF-8, or not Meta's shape
        return HttpResponseBadRequest(f"unreadable body: {error}", content_type="text/plain")
    except RecursionError:
        return HttpResponseBadRequest(
            "unreadable body: JSON nested too deeply", content_type="text/plain"
        )
    now = timezone.now()
    receive_provider_events(
        [
            {
                "provider": "whatsapp_cloud",
                "provider_message_id": update.message_id,
                "kind": WHATSAPP_KINDS[update.status],
                "provider_event_id": f"{update.message_id}:{update.status}",
                "at": update.at or now,
                "data": whatsapp_event_data(update),
            }
            for update in statuses
        ],
        now=now,
    )
    for template in templates:
        record_event(
            "whatsapp.template_status",
            template,
            idempotency_key=_ledger_key("whatsapp.template_status", template),
            now=now,
        )
    return HttpResponse("ok", content_type="text/plain")


def _declared_length(request: HttpRequest) -> int:
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def meta_signature_ok(body: bytes, header: str) -> bool:
    """Meta signs the exact bytes it sent: HMAC-SHA256 with the app secret. Re-serialized
    JSON would not match, which is why the raw body is checked before it is parsed."""
    secret = settings.WHATSAPP_APP_SECRET
    if not secret or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header.removeprefix("sha256=").encode(), expected.encode())


def parse_whatsapp_payload(payload) -> tuple[list[WhatsAppStatus], list[dict]]:
    """Message status updates and template status updates, all read before any is applied
    so a malformed body changes nothing. Other fields (incoming messages) are skipped."""
    statuses: list[WhatsAppStatus] = []
    templates: list[dict] = []
    for entry in _list_of_dicts(_get(payload, "entry"), "entry"):
        for change in _list_of_dicts(entry.get("changes", []), "entry.changes"):
            value = _get(change, "value")
            if not isinstance(value, dict):
                raise BadPayload("changes[].value must be an object")
            if change.get("field") == "message_template_status_update":
                templates.append(_template_update(entry, value))
                continue
            for status in _list_of_dicts(value.get("statuses", []), "value.statuses"):
                update = _status_update(status)
                if update.status in WHATSAPP_KINDS:
                    statuses.append(update)
    return statuses, templates


def _get(obj, key: str):
    if not isinstance(obj, dict) or key not in obj:
        raise BadPayload(f"missing {key!r}")
    return obj[key]


def _list_of_dicts(value, where: str) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise BadPayload(f"{where} must be a list of objects")
    return value


def _status_update(status: dict) -> WhatsAppStatus:
    message_id, state = status.get("id"), status.get("status")
    if not isinstance(message_id, str) or not message_id or not isinstance(state, str):
        raise BadPayload("statuses[] need an id and a status")
    errors = status.get("errors", [])
    if not isinstance(errors, list):
        raise BadPayload("statuses[].errors must be a list")
    return WhatsAppStatus(message_id, state, _unix_time(status.get("timestamp")), errors)


def _unix_time(value) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError) as error:
        raise BadPayload(f"bad timestamp {value!r}") from error


def _template_update(entry: dict, value: dict) -> dict:
    event, name = value.get("event"), value.get("message_template_name")
    if not isinstance(event, str) or not isinstance(name, str) or not name:
        raise BadPayload("a template status update needs event and message_template_name")
    return {
        "waba_id": str(entry.get("id", "")),
        "time": entry.get("time"),
        "event": event,
        "template_id": str(value.get("message_template_id", "")),
        "template_name": name,
        "language": str(value.get("message_template_language", "")),
        "reason": str(value.get("reason") or ""),
    }


def whatsapp_event_data(update: WhatsAppStatus) -> dict:
    data: dict = {"status": update.status}
    if update.errors:
        data["errors"] = update.errors
        first = update.errors[0] if isinstance(update.errors[0], dict) else {}
        data["reason"] = f"WhatsApp error {first.get('code', '?')}: {first.get('title', '')}"
    return data


def _ledger_key(name: str, template: dict) -> str:
    """One ledger event per template status change, however often Meta retries it."""
    parts = [template["waba_id"], template["template_id"] or template["template_name"]]
    parts += [template["language"], template["event"], str(template["time"] or "")]
    key = f"{name}:" + ":".join(parts)
    if len(key) <= 200:
        return key
    return f"{name}:" + hashlib.sha256(key.encode()).hexdigest()
