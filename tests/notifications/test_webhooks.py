import base64
import hashlib
import hmac
import json
import logging
from urllib.parse import urlencode

import pytest
from django.urls import reverse
from twilio.request_validator import RequestValidator

from notifications.models import (
    DeliveryEvent,
    Event,
    Suppression,
    UnmatchedProviderEvent,
)
from tests.notifications.factories import DeliveryFactory

pytestmark = pytest.mark.django_db

SITE_URL = "https://herald.example.com"


def _nothing_written():
    return not (
        DeliveryEvent.objects.exists()
        or UnmatchedProviderEvent.objects.exists()
        or Suppression.objects.exists()
        or Event.objects.exists()
    )


# --- anymail (Postmark's real tracking webhook) -------------------------------------------

POSTMARK_URL = "/webhooks/anymail/postmark/tracking/"
POSTMARK_DELIVERY = {
    "RecordType": "Delivery",
    "ServerID": 23,
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
    "Recipient": "recipient@example.com",
    "Tag": "welcome-email",
    "Metadata": {"idempotency_key": "run-1:42"},
    "DeliveredAt": "2014-08-01T13:28:10.2735393-04:00",
    "Details": "Test delivery webhook details",
}
POSTMARK_HARD_BOUNCE = {
    "RecordType": "Bounce",
    "ID": 901542550,
    "Type": "HardBounce",
    "TypeCode": 1,
    "ServerID": 23,
    "Name": "Hard bounce",
    "MessageID": "2706ee8a-737c-4285-b032-ccd317af53ed",
    "Description": "The server was unable to deliver your message (ex: unknown user, mailbox "
    "not found).",
    "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
    "Email": "bounce@example.com",
    "From": "sender@example.com",
    "BouncedAt": "2016-04-27T16:28:50.3963933-04:00",
    "DumpAvailable": True,
    "Inactive": True,
    "CanActivate": True,
    "Subject": "Postmark event test",
    "Content": "...",
}


@pytest.fixture
def anymail_secret(settings):
    settings.ANYMAIL = {"WEBHOOK_SECRET": "herald:s3cret"}
    return "Basic " + base64.b64encode(b"herald:s3cret").decode()


def _postmark(client, event, auth):
    headers = {"HTTP_AUTHORIZATION": auth} if auth else {}
    return client.post(POSTMARK_URL, json.dumps(event), content_type="application/json", **headers)


def _email(message_id, **fields):
    return DeliveryFactory(
        status="sent", provider="anymail", provider_message_id=message_id, **fields
    )


def test_a_postmark_delivery_webhook_marks_the_email_delivered(client, anymail_secret):
    delivery = _email(POSTMARK_DELIVERY["MessageID"])
    assert _postmark(client, POSTMARK_DELIVERY, anymail_secret).status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    event = delivery.events.get()
    assert event.kind == "delivered"
    assert event.data["esp"] == "Postmark"
    # Postmark sends no event id for deliveries: a stable one is derived, so a retry is a no-op.
    assert _postmark(client, POSTMARK_DELIVERY, anymail_secret).status_code == 200
    assert delivery.events.count() == 1


def test_a_postmark_hard_bounce_suppresses_the_address(client, anymail_secret):
    delivery = _email(POSTMARK_HARD_BOUNCE["MessageID"], address="Bounce@Example.com")
    assert _postmark(client, POSTMARK_HARD_BOUNCE, anymail_secret).status_code == 200
    assert _postmark(client, POSTMARK_HARD_BOUNCE, anymail_secret).status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "bounced"
    assert delivery.status_reason.startswith("Postmark bounced: The server was unable")
    assert delivery.events.get().provider_event_id == "901542550"
    suppression = Suppression.objects.get()
    assert (suppression.address, suppression.channel, suppression.reason) == (
        "bounce@example.com",
        "email",
        "bounce",
    )


def test_a_postmark_soft_bounce_does_not_suppress(client, anymail_secret):
    delivery = _email(POSTMARK_HARD_BOUNCE["MessageID"])
    soft = {**POSTMARK_HARD_BOUNCE, "Type": "SoftBounce", "TypeCode": 4096, "ID": 7}
    assert _postmark(client, soft, anymail_secret).status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "bounced"
    assert not Suppression.objects.exists()


def test_an_email_event_for_an_unknown_message_is_kept(client, anymail_secret):
    assert _postmark(client, POSTMARK_DELIVERY, anymail_secret).status_code == 200
    kept = UnmatchedProviderEvent.objects.get()
    assert (kept.provider, kept.provider_message_id, kept.kind) == (
        "anymail",
        POSTMARK_DELIVERY["MessageID"],
        "delivered",
    )


NO_AUTH = ""
WRONG_AUTH = "Basic " + base64.b64encode(b"herald:wrong").decode()
NOT_BASIC_AUTH = "Bearer herald:s3cret"


@pytest.mark.parametrize("auth", [NO_AUTH, WRONG_AUTH, NOT_BASIC_AUTH])
@pytest.mark.parametrize(
    "url",
    [
        POSTMARK_URL,
        "/webhooks/anymail/sendgrid/tracking/",
        "/webhooks/anymail/amazon_ses/tracking/",
    ],
)
def test_an_email_webhook_without_the_basic_auth_is_challenged_quietly(
    client, anymail_secret, settings, caplog, url, auth
):
    """A plain 401 with the Basic challenge ESPs expect (SNS sends credentials only after
    one): not Django's 400 for a SuspiciousOperation, with its debug page under DEBUG and a
    traceback at ERROR in django.security."""
    settings.DEBUG = True
    delivery = _email(POSTMARK_HARD_BOUNCE["MessageID"])
    headers = {"HTTP_AUTHORIZATION": auth} if auth else {}
    with caplog.at_level(logging.INFO):
        response = client.post(
            url, json.dumps(POSTMARK_HARD_BOUNCE), content_type="application/json", **headers
        )
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic ")
    assert response["Content-Type"].startswith("text/plain")
    assert response.content == b"missing or wrong basic auth"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.name.startswith("django.security")]
    assert any(
        r.name == "notifications.webhooks" and r.levelno == logging.WARNING for r in caplog.records
    )
    assert _nothing_written()
    delivery.refresh_from_db()
    assert delivery.status == "sent"


def test_the_secret_may_be_a_list_of_credentials_to_rotate(client, settings):
    settings.ANYMAIL = {"WEBHOOK_SECRET": ["herald:old", "herald:new"]}
    delivery = _email(POSTMARK_DELIVERY["MessageID"])
    auth = "Basic " + base64.b64encode(b"herald:new").decode()
    assert _postmark(client, POSTMARK_DELIVERY, auth).status_code == 200
    assert _postmark(client, POSTMARK_DELIVERY, WRONG_AUTH).status_code == 401
    delivery.refresh_from_db()
    assert delivery.status == "delivered"


def test_an_esp_signature_that_does_not_match_is_refused_quietly(
    client, anymail_secret, settings, caplog
):
    """Past the basic auth, anymail's own checks (here Mailgun's webhook signature) refuse
    with a plain 403 that says why, as the Twilio and WhatsApp webhooks do."""
    settings.DEBUG = True
    settings.ANYMAIL = {**settings.ANYMAIL, "MAILGUN_WEBHOOK_SIGNING_KEY": "mailgun-key"}
    body = {
        "signature": {
            "timestamp": "1534108637",
            "token": "651869375b9df3c98fc15c4889b102119add1235c38fc92824",
            "signature": "0" * 64,
        },
        "event-data": {"event": "delivered", "message": {"headers": {"message-id": "x@mg"}}},
    }
    with caplog.at_level(logging.INFO):
        response = client.post(
            "/webhooks/anymail/mailgun/tracking/",
            json.dumps(body),
            content_type="application/json",
            HTTP_AUTHORIZATION=anymail_secret,
        )
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/plain")
    assert response.content.decode() == "refused: Mailgun webhook called with incorrect signature"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert _nothing_written()


MAILGUN_URL = "/webhooks/anymail/mailgun/tracking/"


def test_an_esp_webhook_missing_its_signing_key_is_a_503_naming_the_setting(
    client, anymail_secret, settings, caplog
):
    """The walkthrough's `curl -u hook:s3cret -d event=delivered .../mailgun/tracking/` with no
    Mailgun signing key: not a 500 with anymail's traceback at ERROR, but a plain 503 naming
    the variable to set, so the ESP keeps the event and sends it again once it is set."""
    settings.DEBUG = True
    delivery = _email("<x@mg.example.com>")
    with caplog.at_level(logging.INFO):
        response = client.post(
            MAILGUN_URL, {"event": "delivered"}, HTTP_AUTHORIZATION=anymail_secret
        )
    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/plain")
    assert response.content.decode().startswith(
        "email webhooks are not configured: ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY is not set"
    )
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    warnings = [r for r in caplog.records if r.name == "notifications.webhooks"]
    assert [(r.levelno, r.exc_info) for r in warnings] == [(logging.WARNING, None)]
    assert "ANYMAIL_MAILGUN_WEBHOOK_SIGNING_KEY" in warnings[0].getMessage()
    assert _nothing_written()
    delivery.refresh_from_db()
    assert delivery.status == "sent"


def test_an_event_posted_to_the_wrong_webhook_is_a_server_error_not_a_retry(client, anymail_secret):
    """anymail calls an inbound email posted to a tracking URL a configuration error too; no
    setting can make it succeed, so it is not answered 503 (which the ESP would retry for a
    day, logged as a warning): it is raised, a 500 logged at ERROR."""
    from anymail.exceptions import AnymailConfigurationError

    inbound = {"From": "a@example.org", "FromFull": {"Email": "a@example.org"}, "To": "b@x.org"}
    with pytest.raises(AnymailConfigurationError, match="inbound"):
        client.post(
            "/webhooks/anymail/postmark/tracking/",
            data=json.dumps(inbound),
            content_type="application/json",
            HTTP_AUTHORIZATION=anymail_secret,
        )
    assert _nothing_written()


def test_a_mailgun_event_signed_with_the_configured_key_is_applied(
    client, anymail_secret, settings
):
    settings.ANYMAIL = {**settings.ANYMAIL, "MAILGUN_WEBHOOK_SIGNING_KEY": "mailgun-key"}
    delivery = _email("<x@mg.example.com>")
    timestamp, token = "1534108637", "651869375b9df3c98fc15c4889b102119add1235c38fc92824"
    signature = hmac.new(b"mailgun-key", f"{timestamp}{token}".encode(), hashlib.sha256)
    body = {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature.hexdigest()},
        "event-data": {
            "event": "delivered",
            "id": "mg-event-1",
            "timestamp": 1534108637.153125,
            "recipient": delivery.address,
            "message": {"headers": {"message-id": "x@mg.example.com"}},
        },
    }
    response = client.post(
        MAILGUN_URL,
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=anymail_secret,
    )
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "delivered"


# --- anymail (Amazon SES through SNS) ----------------------------------------------------------

SES_URL = "/webhooks/anymail/amazon_ses/tracking/"
SES_MESSAGE_ID = "0100016ac3ab1fa2-7d6d1d12-1c80-4c5a-9c45-d8a8d1b6d5b2-000000"
SES_MAIL = {
    "timestamp": "2019-05-21T18:43:26.451Z",
    "source": "herald@example.com",
    "messageId": SES_MESSAGE_ID,
    "destination": ["recipient@example.com"],
    "headers": [{"name": "X-Metadata", "value": '{"idempotency_key": "run-1:42"}'}],
}
# SES event publishing (eventType); the older notifications say notificationType.
SES_DELIVERY = {
    "eventType": "Delivery",
    "mail": SES_MAIL,
    "delivery": {
        "timestamp": "2019-05-21T18:43:27.183Z",
        "processingTimeMillis": 732,
        "recipients": ["recipient@example.com"],
        "smtpResponse": "250 2.0.0 OK  1558464207 x9si3136178pgi.129 - gsmtp",
        "reportingMTA": "a8-83.smtp-out.amazonses.com",
    },
}
SES_BOUNCE = {
    "notificationType": "Bounce",
    "mail": SES_MAIL,
    "bounce": {
        "feedbackId": "0100016ac3ab2134-47ab0b86-8b95-4f0b-a4ef-41d4ae3c3d4c-000000",
        "bounceType": "Permanent",
        "bounceSubType": "General",
        "bouncedRecipients": [
            {
                "emailAddress": "recipient@example.com",
                "action": "failed",
                "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 user unknown",
            }
        ],
        "timestamp": "2019-05-21T18:43:27.427Z",
        "reportingMTA": "dsn; a8-83.smtp-out.amazonses.com",
    },
}


def _sns_notification(ses_event, message_id="c3c4d1a4-5b38-5d4c-9b8a-2f5f3f0c1a11"):
    """SNS's HTTP(S) delivery: a Notification whose Message is the SES event as a string."""
    message = ses_event if isinstance(ses_event, str) else json.dumps(ses_event)
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": "arn:aws:sns:us-east-1:111111111111:herald-ses-events",
        "Subject": "Amazon SES Email Event Notification",
        "Message": message,
        "Timestamp": "2019-05-21T18:43:27.500Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    }


def _sns_post(client, body, auth, *, sns_type=None, message_id=None):
    """SNS names the message type and id in headers as well as in the body."""
    payload = body if isinstance(body, str) else json.dumps(body)
    parsed = body if isinstance(body, dict) else {}
    headers = {
        "HTTP_X_AMZ_SNS_MESSAGE_TYPE": sns_type or parsed.get("Type", "Notification"),
        "HTTP_X_AMZ_SNS_MESSAGE_ID": message_id or parsed.get("MessageId", ""),
    }
    if auth:
        headers["HTTP_AUTHORIZATION"] = auth
    # SNS posts JSON as text/plain.
    return client.post(SES_URL, payload, content_type="text/plain; charset=UTF-8", **headers)


def test_an_ses_delivery_notification_marks_the_email_delivered(client, anymail_secret):
    delivery = _email(SES_MESSAGE_ID, address="recipient@example.com")
    notification = _sns_notification(SES_DELIVERY)
    assert _sns_post(client, notification, anymail_secret).status_code == 200
    # SNS retries deliver the same MessageId: recorded once.
    assert _sns_post(client, notification, anymail_secret).status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    event = delivery.events.get()
    assert (event.kind, event.provider_event_id) == ("delivered", notification["MessageId"])
    assert event.data["esp"] == "Amazon SES"
    assert event.data["mta_response"].startswith("250 2.0.0 OK")


def test_an_ses_permanent_bounce_suppresses_the_address(client, anymail_secret):
    delivery = _email(SES_MESSAGE_ID, address="Recipient@Example.com")
    notification = _sns_notification(SES_BOUNCE, message_id="7e1f7c4a-bounce")
    assert _sns_post(client, notification, anymail_secret).status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "bounced"
    assert delivery.status_reason.startswith("Amazon SES bounced: Permanent: General")
    suppression = Suppression.objects.get()
    assert (suppression.address, suppression.reason) == ("recipient@example.com", "bounce")


def test_the_ses_confirmation_after_subscribing_is_acknowledged(client, anymail_secret):
    notification = _sns_notification(
        "Successfully validated SNS topic for Amazon SES event publishing."
    )
    assert _sns_post(client, notification, anymail_secret).status_code == 200
    assert _nothing_written()


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ("garbage", {"sns_type": "Notification", "message_id": "m-1"}),
        ("[]", {"sns_type": "Notification", "message_id": "m-1"}),
        (_sns_notification("not json", message_id="m-2"), {}),
        (
            _sns_notification({"eventType": "Bounce", "mail": SES_MAIL, "bounce": {}}, "m-3"),
            {},
        ),
        ({**_sns_notification(SES_DELIVERY, "m-4"), "Type": "Surprise"}, {}),
    ],
    ids=["not-json", "not-an-object", "message-not-json", "bounce-without-fields", "sns-type"],
)
def test_an_unreadable_ses_notification_is_a_bad_request(client, anymail_secret, body, headers):
    delivery = _email(SES_MESSAGE_ID)
    client.raise_request_exception = False
    response = _sns_post(client, body, anymail_secret, **headers)
    assert response.status_code == 400
    assert response.content.decode().startswith("unreadable body: ")
    assert _nothing_written()
    delivery.refresh_from_db()
    assert delivery.status == "sent"


def test_an_ses_notification_whose_headers_disagree_with_its_body_is_refused(
    client, anymail_secret
):
    delivery = _email(SES_MESSAGE_ID)
    notification = _sns_notification(SES_DELIVERY)
    response = _sns_post(client, notification, anymail_secret, message_id="someone-else")
    assert response.status_code == 403
    assert response.content.decode().startswith('refused: SNS header "x-amz-sns-message-id')
    assert _nothing_written()
    delivery.refresh_from_db()
    assert delivery.status == "sent"


# --- Twilio status callback ------------------------------------------------------------------

TWILIO_PATH = "/webhooks/twilio/status"


@pytest.fixture
def twilio(settings):
    settings.SITE_URL = SITE_URL
    settings.TWILIO_AUTH_TOKEN = "12345"
    return RequestValidator("12345")


def test_twilio_signatures_match_twilios_own_test_vector():
    # twilio-python tests/unit/test_request_validator.py
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    uri = "https://mycompany.com/myapp.php?foo=1&bar=2"
    validator = RequestValidator("12345")
    assert validator.compute_signature(uri, params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert validator.validate(uri, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def _twilio_post(client, params, *, signature=None, validator=None, query="", signed_url=None):
    path = TWILIO_PATH + (f"?{query}" if query else "")
    if signature is None and validator is not None:
        signature = validator.compute_signature(signed_url or SITE_URL + path, params)
    headers = {"HTTP_X_TWILIO_SIGNATURE": signature} if signature else {}
    return client.post(
        path, urlencode(params), content_type="application/x-www-form-urlencoded", **headers
    )


def _sms(sid="SM1234567890ABCDE", **fields):
    return DeliveryFactory(
        channel="sms",
        address="+14158675309",
        status="sent",
        provider="twilio",
        provider_message_id=sid,
        **fields,
    )


def _status_params(status, sid="SM1234567890ABCDE", **extra):
    return {
        "AccountSid": "AC123",
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "From": "+15005550006",
        "To": "+14158675309",
        "ApiVersion": "2010-04-01",
        **extra,
    }


def test_a_signed_twilio_callback_marks_the_sms_delivered(client, twilio):
    delivery = _sms()
    response = _twilio_post(client, _status_params("delivered"), validator=twilio)
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "delivered"
    assert delivery.events.get().provider_event_id == "SM1234567890ABCDE:delivered"
    assert _twilio_post(client, _status_params("delivered"), validator=twilio).status_code == 200
    assert delivery.events.count() == 1


def test_the_signed_url_includes_the_query_string(client, twilio):
    delivery = _sms()
    response = _twilio_post(client, _status_params("read"), validator=twilio, query="d=7")
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "opened"


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "RSOYDt4T1cUTdK1PDd93/VVr8B8=",  # a real signature, for another request
        "not-a-signature",
    ],
)
def test_a_twilio_callback_with_a_wrong_or_missing_signature_is_refused(client, twilio, signature):
    delivery = _sms()
    response = _twilio_post(
        client, _status_params("failed", ErrorCode="21610"), signature=signature
    )
    assert response.status_code == 403
    assert _nothing_written()
    delivery.refresh_from_db()
    assert delivery.status == "sent"


def test_a_twilio_signature_for_another_url_is_refused(client, twilio):
    _sms()
    response = _twilio_post(
        client,
        _status_params("delivered"),
        validator=twilio,
        signed_url="https://attacker.example.com/webhooks/twilio/status",
    )
    assert response.status_code == 403
    assert _nothing_written()


def test_a_twilio_callback_is_refused_when_no_auth_token_is_configured(client, twilio, settings):
    _sms()
    signed = twilio.compute_signature(SITE_URL + TWILIO_PATH, _status_params("delivered"))
    settings.TWILIO_AUTH_TOKEN = ""
    response = _twilio_post(client, _status_params("delivered"), signature=signed)
    assert response.status_code == 403
    assert response.content.decode().startswith(
        "Twilio status callbacks are refused: TWILIO_AUTH_TOKEN is not set"
    )
    assert _nothing_written()


@pytest.mark.parametrize("missing", ["MessageSid", "MessageStatus"])
def test_a_twilio_callback_without_sid_or_status_is_a_bad_request(client, twilio, missing):
    params = _status_params("delivered")
    del params[missing]
    assert _twilio_post(client, params, validator=twilio).status_code == 400
    assert _nothing_written()


@pytest.mark.parametrize("status", ["queued", "accepted", "sending"])
def test_twilio_in_flight_statuses_are_acknowledged_and_ignored(client, twilio, status):
    delivery = _sms()
    response = _twilio_post(client, _status_params(status), validator=twilio)
    assert (response.status_code, response.content) == (200, b"ignored")
    assert _nothing_written()
    delivery.refresh_from_db()
    assert delivery.status == "sent"


def test_an_undelivered_sms_fails_without_suppressing(client, twilio):
    delivery = _sms()
    params = _status_params("undelivered", ErrorCode="30003")
    assert _twilio_post(client, params, validator=twilio).status_code == 200
    delivery.refresh_from_db()
    assert (delivery.status, delivery.status_reason) == (
        "failed",
        "Twilio undelivered (error 30003)",
    )
    assert delivery.events.get().data["error_code"] == "30003"
    assert not Suppression.objects.exists()


def test_twilio_21610_suppresses_the_number(client, twilio):
    delivery = _sms()
    params = _status_params("failed", ErrorCode="21610")
    assert _twilio_post(client, params, validator=twilio).status_code == 200
    suppression = Suppression.objects.get()
    assert (suppression.address, suppression.channel, suppression.reason) == (
        delivery.address,
        "sms",
        "unsubscribe",
    )


def test_a_twilio_callback_for_an_unknown_sid_is_kept_not_an_error(client, twilio):
    response = _twilio_post(client, _status_params("delivered", sid="SMunknown"), validator=twilio)
    assert response.status_code == 200
    assert UnmatchedProviderEvent.objects.get().provider_message_id == "SMunknown"


def test_the_twilio_callback_only_takes_post(client, twilio):
    assert client.get(TWILIO_PATH).status_code == 405


# --- WhatsApp Cloud API ------------------------------------------------------------------------

WHATSAPP_PATH = "/webhooks/whatsapp"
APP_SECRET = "meta-app-secret"


@pytest.fixture
def meta(settings):
    settings.WHATSAPP_APP_SECRET = APP_SECRET
    settings.WHATSAPP_VERIFY_TOKEN = "verify-me"


def _statuses_payload(*statuses):
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550783881",
                                "phone_number_id": "106540352242922",
                            },
                            "statuses": list(statuses),
                        },
                    }
                ],
            }
        ],
    }


def _status(status, wamid="wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA", **extra):
    return {
        "id": wamid,
        "status": status,
        "timestamp": "1750263773",
        "recipient_id": "16505551234",
        **extra,
    }


def _sign(body: bytes, secret=APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _meta_post(client, body: bytes, signature=None):
    headers = {"HTTP_X_HUB_SIGNATURE_256": signature} if signature else {}
    return client.post(WHATSAPP_PATH, body, content_type="application/json", **headers)


def _whatsapp(wamid="wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJDQjZCMzlEQUE4OTJBMTE4RTUA", **fields):
    return DeliveryFactory(
        channel="whatsapp",
        address="+16505551234",
        status="sent",
        provider="whatsapp_cloud",
        provider_message_id=wamid,
        **fields,
    )


def test_the_whatsapp_handshake_echoes_the_challenge(client, meta):
    response = client.get(
        WHATSAPP_PATH,
        {"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "1158201444"},
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert response.content == b"1158201444"


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": "verify-me", "hub.challenge": "1"},
        {"hub.challenge": "1"},
    ],
)
def test_a_whatsapp_handshake_with_the_wrong_token_is_refused(client, meta, query):
    assert client.get(WHATSAPP_PATH, query).status_code == 403


def test_no_handshake_succeeds_without_a_configured_verify_token(client, meta, settings):
    settings.WHATSAPP_VERIFY_TOKEN = ""
    query = {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"}
    response = client.get(WHATSAPP_PATH, query)
    assert response.status_code == 403
    assert "WHATSAPP_VERIFY_TOKEN is not set" in response.content.decode()


def test_a_whatsapp_status_signed_over_the_raw_bytes_is_applied(client, meta):
    delivery = _whatsapp()
    # Meta's own formatting; the signature covers exactly these bytes.
    body = json.dumps(_statuses_payload(_status("delivered"), _status("read")), indent=1).encode()
    response = _meta_post(client, body, _sign(body))
    assert response.status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "opened"
    events = {e.provider_event_id: e for e in delivery.events.all()}
    assert set(events) == {f"{delivery.provider_message_id}:{s}" for s in ("delivered", "read")}
    assert events[f"{delivery.provider_message_id}:read"].at.timestamp() == 1750263773
    assert _meta_post(client, body, _sign(body)).status_code == 200  # Meta retries
    assert delivery.events.count() == 2


def test_the_same_json_reserialized_with_the_original_signature_is_refused(client, meta):
    delivery = _whatsapp()
    body = json.dumps(_statuses_payload(_status("delivered")), indent=1).encode()
    reserialized = json.dumps(json.loads(body), separators=(",", ":")).encode()
    assert reserialized != body and json.loads(reserialized) == json.loads(body)
    assert _meta_post(client, reserialized, _sign(body)).status_code == 403
    assert _nothing_written()
    delivery.refresh_from_db()
    assert delivery.status == "sent"


@pytest.mark.parametrize(
    "signature",
    [None, "sha256=" + "0" * 64, "sha1=abc", "sha256=ünïcode"],
)
def test_a_whatsapp_post_with_a_wrong_or_missing_signature_is_refused(client, meta, signature):
    _whatsapp()
    body = json.dumps(_statuses_payload(_status("failed"))).encode()
    assert _meta_post(client, body, signature).status_code == 403
    assert _nothing_written()


def test_a_whatsapp_post_signed_with_another_secret_is_refused(client, meta):
    _whatsapp()
    body = json.dumps(_statuses_payload(_status("delivered"))).encode()
    assert _meta_post(client, body, _sign(body, secret="other")).status_code == 403
    assert _nothing_written()


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"entry": {}}',
        b'{"entry": [{"changes": [{"value": []}]}]}',
        # one good status and one without an id: nothing of it is applied
        json.dumps(_statuses_payload(_status("delivered"), {"status": "read"})).encode(),
        json.dumps(_statuses_payload(_status("delivered", timestamp="yesterday"))).encode(),
    ],
)
def test_a_signed_but_malformed_whatsapp_body_is_a_bad_request(client, meta, body):
    delivery = _whatsapp()
    assert _meta_post(client, body, _sign(body)).status_code == 400
    assert _nothing_written()
    delivery.refresh_from_db()
    assert delivery.status == "sent"


def test_an_oversized_whatsapp_body_is_refused(client, meta):
    body = b'{"entry": [], "padding": "' + b"x" * (1024 * 1024) + b'"}'
    assert _meta_post(client, body, _sign(body)).status_code == 413
    assert _nothing_written()


def test_a_failed_whatsapp_message_records_meta_s_error(client, meta):
    delivery = _whatsapp()
    error = {
        "code": 131026,
        "title": "Message undeliverable",
        "message": "Message undeliverable",
        "error_data": {"details": "Message Undeliverable."},
    }
    body = json.dumps(_statuses_payload(_status("failed", errors=[error]))).encode()
    assert _meta_post(client, body, _sign(body)).status_code == 200
    delivery.refresh_from_db()
    assert (delivery.status, delivery.status_reason) == (
        "failed",
        "WhatsApp error 131026: Message undeliverable",
    )
    assert delivery.events.get().data["errors"] == [error]


def test_a_whatsapp_status_for_an_unknown_message_is_kept(client, meta):
    body = json.dumps(_statuses_payload(_status("sent", wamid="wamid.unknown"))).encode()
    assert _meta_post(client, body, _sign(body)).status_code == 200
    kept = UnmatchedProviderEvent.objects.get()
    assert (kept.provider, kept.provider_message_id, kept.kind) == (
        "whatsapp_cloud",
        "wamid.unknown",
        "sent",
    )


def test_incoming_whatsapp_messages_are_acknowledged_and_ignored(client, meta):
    payload = _statuses_payload()
    value = payload["entry"][0]["changes"][0]["value"]
    del value["statuses"]
    value["messages"] = [{"from": "16505551234", "id": "wamid.in", "type": "text"}]
    body = json.dumps(payload).encode()
    assert _meta_post(client, body, _sign(body)).status_code == 200
    assert _nothing_written()


def test_a_template_status_update_is_recorded_in_the_event_ledger_once(client, meta):
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "time": 1750263773,
                "changes": [
                    {
                        "field": "message_template_status_update",
                        "value": {
                            "event": "REJECTED",
                            "message_template_id": 1689556908129832,
                            "message_template_name": "production_run_stalled",
                            "message_template_language": "en_US",
                            "reason": "INCORRECT_CATEGORY",
                        },
                    }
                ],
            }
        ],
    }
    body = json.dumps(payload).encode()
    assert _meta_post(client, body, _sign(body)).status_code == 200
    assert _meta_post(client, body, _sign(body)).status_code == 200
    event = Event.objects.get()
    assert event.name == "whatsapp.template_status"
    assert event.payload["template_name"] == "production_run_stalled"
    assert (event.payload["event"], event.payload["language"]) == ("REJECTED", "en_US")
    assert event.payload["reason"] == "INCORRECT_CATEGORY"


@pytest.mark.parametrize("auth", ["", "Basic " + base64.b64encode(b":").decode()])
def test_without_a_configured_secret_every_email_webhook_is_refused(client, settings, auth):
    """anymail alone only warns (AnymailInsecureWebhookWarning) and accepts anyone: a forged
    bounce would mark the delivery bounced and suppress the address."""
    settings.ANYMAIL = {}
    delivery = _email(POSTMARK_HARD_BOUNCE["MessageID"])
    response = _postmark(client, POSTMARK_HARD_BOUNCE, auth)
    assert response.status_code == 403
    assert "ANYMAIL_WEBHOOK_SECRET is not set" in response.content.decode()
    assert _nothing_written()
    delivery.refresh_from_db()
    assert delivery.status == "sent"
    assert not Suppression.objects.exists()
    assert reverse("anymail:postmark_tracking_webhook") == POSTMARK_URL


def test_the_secret_may_also_be_the_bare_anymail_setting(client, settings):
    settings.ANYMAIL = {}
    settings.ANYMAIL_WEBHOOK_SECRET = "herald:s3cret"
    delivery = _email(POSTMARK_DELIVERY["MessageID"])
    auth = "Basic " + base64.b64encode(b"herald:s3cret").decode()
    assert _postmark(client, POSTMARK_DELIVERY, auth).status_code == 200
    delivery.refresh_from_db()
    assert delivery.status == "delivered"


def test_a_whatsapp_post_says_when_no_app_secret_is_configured(client, meta, settings):
    settings.WHATSAPP_APP_SECRET = ""
    response = client.post(
        WHATSAPP_PATH,
        b"{}",
        content_type="application/json",
        HTTP_X_HUB_SIGNATURE_256="sha256=" + "0" * 64,
    )
    assert response.status_code == 403
    assert response.content.decode().startswith(
        "WhatsApp webhooks are refused: WHATSAPP_APP_SECRET is not set"
    )


@pytest.mark.parametrize(
    ("url", "body", "reason"),
    [
        (POSTMARK_URL, "garbage", "not JSON (Expecting value: line 1 column 1 (char 0))"),
        (POSTMARK_URL, "[]", "not the shape this ESP's webhook sends ("),
        (
            "/webhooks/anymail/sendgrid/tracking/",
            '{"a": 1}',
            "not the shape this ESP's webhook sends (TypeError: string indices must be",
        ),
    ],
)
def test_an_unreadable_email_webhook_body_is_a_bad_request(
    client, anymail_secret, url, body, reason
):
    delivery = _email(POSTMARK_DELIVERY["MessageID"])
    response = client.post(
        url, body, content_type="application/json", HTTP_AUTHORIZATION=anymail_secret
    )
    assert response.status_code == 400
    assert response.content.decode().startswith(f"unreadable body: {reason}")
    delivery.refresh_from_db()
    assert delivery.status == "sent" and not delivery.events.exists()


def test_an_email_event_herald_fails_to_record_is_a_500_so_the_esp_sends_it_again(
    client, anymail_secret, monkeypatch
):
    from notifications import webhooks

    _email(POSTMARK_DELIVERY["MessageID"])

    def broken(events, *, now):
        raise TypeError("database said no")

    monkeypatch.setattr(webhooks, "receive_provider_events", broken)
    client.raise_request_exception = False
    response = _postmark(client, POSTMARK_DELIVERY, anymail_secret)
    assert response.status_code == 500


def test_another_receivers_type_error_is_a_500_not_a_bad_body(client, anymail_secret):
    from anymail.signals import tracking

    def receiver(sender, event, esp_name, **kwargs):
        raise TypeError("someone else's bug")

    tracking.connect(receiver, dispatch_uid="test.broken_receiver")
    try:
        client.raise_request_exception = False
        response = _postmark(client, POSTMARK_DELIVERY, anymail_secret)
    finally:
        tracking.disconnect(dispatch_uid="test.broken_receiver")
    assert response.status_code == 500


DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's JSON decoder goes


def test_json_nested_too_deeply_is_a_bad_request_on_the_email_webhook(client, anymail_secret):
    delivery = _email(POSTMARK_DELIVERY["MessageID"])
    response = client.post(
        POSTMARK_URL, DEEP, content_type="application/json", HTTP_AUTHORIZATION=anymail_secret
    )
    assert response.status_code == 400
    assert response.content.decode() == (
        "unreadable body: not JSON a server can read (nested too deeply)"
    )
    delivery.refresh_from_db()
    assert delivery.status == "sent" and not delivery.events.exists()


def test_json_nested_too_deeply_is_a_bad_request_on_the_whatsapp_webhook(client, meta):
    body = DEEP.encode()
    response = _meta_post(client, body, _sign(body))
    assert response.status_code == 400
    assert response.content.decode() == "unreadable body: JSON nested too deeply"
