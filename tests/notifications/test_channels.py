"""The channel layer against providers faked at the HTTP seam (responses), never deeper.

Each test checks what the provider would actually receive, or how its answer is classified.
"""

import json
import smtplib
import socket
import socketserver
import threading
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import pytest
import responses
from anymail.backends.base_requests import AnymailRequestsBackend
from anymail.exceptions import AnymailInvalidAddress, AnymailRecipientsRefused
from django.contrib.auth.models import User
from django.core import mail
from django.core.exceptions import ImproperlyConfigured
from django.core.mail.backends.locmem import EmailBackend as LocmemEmailBackend
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ConnectTimeout, ReadTimeout

from notifications import batch, dispatch
from notifications.batch import is_email_address
from notifications.channels import (
    ChannelError,
    OutgoingMessage,
    PermanentError,
    TransientError,
    get_channel,
)
from notifications.channels.email import EmailChannel, classify_email_error
from notifications.channels.recording import SMSChannel, WhatsAppChannel
from notifications.channels.sms import TwilioSMSChannel
from notifications.channels.whatsapp import CloudAPIWhatsAppChannel
from notifications.dispatch import ManualClock
from notifications.models import Delivery, RecordedMessage
from tests.notifications.factories import CustomerFactory, DeliveryFactory

SID = "AC00000000000000000000000000000000"
TWILIO_URL = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
GRAPH_URL = "https://graph.facebook.com/v21.0"
WHATSAPP_URL = f"{GRAPH_URL}/1122334455/messages"
POSTMARK_URL = "https://api.postmarkapp.com/email"
PHONE = "+14155550123"


@pytest.fixture
def provider_http():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        yield rsps


@pytest.fixture
def twilio_settings(settings):
    settings.SMS_BACKEND = "notifications.channels.sms.TwilioSMSChannel"
    settings.TWILIO_ACCOUNT_SID = SID
    settings.TWILIO_AUTH_TOKEN = "secret-token"
    settings.TWILIO_FROM_NUMBER = "+15005550006"
    settings.TWILIO_MESSAGING_SERVICE_SID = ""
    settings.PROVIDER_TIMEOUT_SECONDS = 4.0
    return settings


@pytest.fixture
def whatsapp_settings(settings):
    settings.WHATSAPP_BACKEND = "notifications.channels.whatsapp.CloudAPIWhatsAppChannel"
    settings.WHATSAPP_GRAPH_URL = GRAPH_URL
    settings.WHATSAPP_ACCESS_TOKEN = "meta-token"
    settings.WHATSAPP_PHONE_NUMBER_ID = "1122334455"
    settings.PROVIDER_TIMEOUT_SECONDS = 4.0
    return settings


@pytest.fixture
def postmark_settings(settings):
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "x"}
    return settings


def sms(**overrides) -> OutgoingMessage:
    fields = {"channel": "sms", "to": PHONE, "idempotency_key": "k-sms", "body": "Your kiosk"}
    return OutgoingMessage(**{**fields, **overrides})


def whatsapp(payload=None, **overrides) -> OutgoingMessage:
    payload = {"template": "run_stalled", "language": "es"} if payload is None else payload
    fields = {"channel": "whatsapp", "to": PHONE, "idempotency_key": "k-wa", "payload": payload}
    return OutgoingMessage(**{**fields, **overrides})


def email(**overrides) -> OutgoingMessage:
    fields = {
        "channel": "email",
        "to": "ana@example.com",
        "idempotency_key": "k-email",
        "subject": "Your order",
        "body": "Plain text",
    }
    return OutgoingMessage(**{**fields, **overrides})


def twilio_error(status: int, code: int | None = None) -> dict:
    return {
        "code": code,
        "message": "refused",
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def meta_error(code: int, message: str = "refused") -> dict:
    return {"error": {"message": message, "type": "OAuthException", "code": code}}


# --- get_channel ----------------------------------------------------------------------------


def test_get_channel_email_is_always_the_django_mail_channel(settings):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    assert isinstance(get_channel("email"), EmailChannel)


def test_get_channel_builds_the_configured_sms_and_whatsapp_backends(
    twilio_settings, whatsapp_settings
):
    assert isinstance(get_channel("sms"), TwilioSMSChannel)
    assert isinstance(get_channel("whatsapp"), CloudAPIWhatsAppChannel)


def test_get_channel_defaults_to_recording_backends(settings):
    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"
    settings.WHATSAPP_BACKEND = "notifications.channels.recording.WhatsAppChannel"
    assert isinstance(get_channel("sms"), SMSChannel)
    assert isinstance(get_channel("whatsapp"), WhatsAppChannel)


def test_get_channel_unknown_name_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="'pigeon'"):
        get_channel("pigeon")


def test_channel_errors_carry_permanence_retry_after_and_code():
    transient = TransientError("busy", retry_after=3.0, code="429")
    permanent = PermanentError("gone", code="21211")
    assert (transient.permanent, transient.retry_after, transient.code) == (False, 3.0, "429")
    assert (permanent.permanent, permanent.retry_after, permanent.code) == (True, None, "21211")
    assert isinstance(transient, ChannelError) and isinstance(permanent, ChannelError)
    assert str(permanent) == "gone"


# --- Twilio SMS -----------------------------------------------------------------------------


def test_twilio_posts_to_from_body_and_status_callback(twilio_settings, provider_http):
    provider_http.post(TWILIO_URL, json={"sid": "SM123", "status": "queued"}, status=201)

    sid = get_channel("sms").send(sms(status_callback="https://herald.test/hooks/twilio/7"))

    assert sid == "SM123"
    request = provider_http.calls[0].request
    assert parse_qs(request.body) == {
        "To": [PHONE],
        "From": ["+15005550006"],
        "Body": ["Your kiosk"],
        "StatusCallback": ["https://herald.test/hooks/twilio/7"],
    }
    assert request.headers["Authorization"].startswith("Basic ")
    assert request.req_kwargs["timeout"] == 4.0


def test_twilio_uses_messaging_service_when_configured(twilio_settings, provider_http):
    twilio_settings.TWILIO_MESSAGING_SERVICE_SID = "MG999"
    provider_http.post(TWILIO_URL, json={"sid": "SM124"}, status=201)

    get_channel("sms").send(sms())

    assert parse_qs(provider_http.calls[0].request.body) == {
        "To": [PHONE],
        "MessagingServiceSid": ["MG999"],
        "Body": ["Your kiosk"],
    }


def test_twilio_sender_override_in_payload_wins(twilio_settings, provider_http):
    twilio_settings.TWILIO_MESSAGING_SERVICE_SID = "MG999"
    provider_http.post(TWILIO_URL, json={"sid": "SM125"}, status=201)

    get_channel("sms").send(sms(payload={"from": "+15005550007"}))

    assert parse_qs(provider_http.calls[0].request.body) == {
        "To": [PHONE],
        "From": ["+15005550007"],
        "Body": ["Your kiosk"],
    }


@pytest.mark.parametrize(
    ("code", "suppress"),
    [(21211, "bounce"), (21408, ""), (21610, "unsubscribe"), (21612, ""), (21614, "bounce")],
)
def test_twilio_recipient_codes_are_permanent(twilio_settings, provider_http, code, suppress):
    provider_http.post(TWILIO_URL, json=twilio_error(400, code), status=400)

    with pytest.raises(PermanentError) as caught:
        get_channel("sms").send(sms())

    assert caught.value.code == str(code)
    # Only a verdict on the number itself (not on this sender or region) suppresses it.
    assert caught.value.suppress == suppress


def test_twilio_21211_invalid_number_is_permanent(twilio_settings, provider_http):
    provider_http.post(TWILIO_URL, json=twilio_error(400, 21211), status=400)

    with pytest.raises(PermanentError) as caught:
        get_channel("sms").send(sms())

    assert caught.value.permanent is True
    assert caught.value.code == "21211"


def test_twilio_other_400_is_permanent(twilio_settings, provider_http):
    provider_http.post(TWILIO_URL, json=twilio_error(400, 21602), status=400)

    with pytest.raises(PermanentError) as caught:
        get_channel("sms").send(sms())

    assert caught.value.code == "21602"


def test_twilio_500_is_transient(twilio_settings, provider_http):
    provider_http.post(TWILIO_URL, json=twilio_error(500, 20500), status=500)

    with pytest.raises(TransientError):
        get_channel("sms").send(sms())


def test_twilio_429_is_transient(twilio_settings, provider_http):
    provider_http.post(TWILIO_URL, json=twilio_error(429, 20429), status=429)

    with pytest.raises(TransientError) as caught:
        get_channel("sms").send(sms())

    assert caught.value.code == "20429"


def _refused():
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    reason = NewConnectionError(None, "Failed to establish a new connection: refused")
    return RequestsConnectionError(MaxRetryError(None, "/Messages.json", reason=reason))


def _dropped():
    from urllib3.exceptions import ProtocolError

    return RequestsConnectionError(ProtocolError("Connection aborted.", ConnectionResetError()))


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (ConnectTimeout(), "connection_error"),  # nothing reached Twilio: retried
        (_refused(), "connection_error"),
        (ReadTimeout(), "no_answer"),  # it may have the message: dispatch leaves it unknown
        (_dropped(), "no_answer"),
        (RequestsConnectionError(), "no_answer"),  # no telling when: as if it went out
    ],
    ids=["connect-timeout", "refused", "read-timeout", "dropped", "unexplained"],
)
def test_twilio_unreachable_is_transient_and_says_whether_it_may_have_the_message(
    twilio_settings, provider_http, failure, code
):
    provider_http.post(TWILIO_URL, body=failure)

    with pytest.raises(TransientError) as caught:
        get_channel("sms").send(sms())

    assert caught.value.code == code


@pytest.mark.parametrize("missing", ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"])
def test_twilio_missing_credentials_is_improperly_configured(twilio_settings, missing):
    setattr(twilio_settings, missing, "")

    with pytest.raises(ImproperlyConfigured, match=missing):
        get_channel("sms")


def test_twilio_without_any_sender_is_improperly_configured(twilio_settings):
    twilio_settings.TWILIO_FROM_NUMBER = ""

    with pytest.raises(ImproperlyConfigured, match="TWILIO_FROM_NUMBER"):
        get_channel("sms")


# --- WhatsApp Cloud API ---------------------------------------------------------------------


def test_whatsapp_posts_the_template_with_every_component(whatsapp_settings, provider_http):
    provider_http.post(WHATSAPP_URL, json={"messages": [{"id": "wamid.ABC"}]})
    payload = {
        "template": "run_stalled",
        "language": "es",
        "parameters": ["Lote 7", "3 días"],
        "header_image": "https://herald.test/static/run.png",
        "button_url_suffix": "runs/7",
    }

    message_id = get_channel("whatsapp").send(whatsapp(payload))

    assert message_id == "wamid.ABC"
    request = provider_http.calls[0].request
    assert request.headers["Authorization"] == "Bearer meta-token"
    assert request.req_kwargs["timeout"] == 4.0
    assert json.loads(request.body) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "14155550123",
        "type": "template",
        "template": {
            "name": "run_stalled",
            "language": {"code": "es"},
            "components": [
                {
                    "type": "header",
                    "parameters": [
                        {"type": "image", "image": {"link": "https://herald.test/static/run.png"}}
                    ],
                },
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Lote 7"},
                        {"type": "text", "text": "3 días"},
                    ],
                },
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": "0",
                    "parameters": [{"type": "text", "text": "runs/7"}],
                },
            ],
        },
    }


def test_whatsapp_template_without_parameters_sends_no_components(whatsapp_settings, provider_http):
    provider_http.post(WHATSAPP_URL, json={"messages": [{"id": "wamid.B"}]})

    get_channel("whatsapp").send(whatsapp({"template": "hello_world"}))

    sent = json.loads(provider_http.calls[0].request.body)
    assert sent["template"] == {"name": "hello_world", "language": {"code": "en"}, "components": []}


def test_whatsapp_phone_number_id_override_changes_the_url(whatsapp_settings, provider_http):
    provider_http.post(f"{GRAPH_URL}/999/messages", json={"messages": [{"id": "wamid.C"}]})

    assert get_channel("whatsapp").send(whatsapp({"template": "t", "phone_number_id": "999"}))


def test_whatsapp_429_is_transient_with_retry_after(whatsapp_settings, provider_http):
    provider_http.post(
        WHATSAPP_URL, json=meta_error(130429), status=429, headers={"Retry-After": "7"}
    )

    with pytest.raises(TransientError) as caught:
        get_channel("whatsapp").send(whatsapp())

    assert caught.value.retry_after == 7
    assert caught.value.code == "130429"


def test_whatsapp_missing_template_132001_is_permanent(whatsapp_settings, provider_http):
    provider_http.post(
        WHATSAPP_URL,
        json=meta_error(132001, "(#132001) Template name does not exist in the translation"),
        status=400,
    )

    with pytest.raises(PermanentError) as caught:
        get_channel("whatsapp").send(whatsapp())

    assert caught.value.code == "132001"
    assert "132001" in str(caught.value)
    assert "Template name does not exist" in str(caught.value)


@pytest.mark.parametrize("code", [4, 80007, 131048, 131056, 133016])
def test_whatsapp_meta_rate_limit_codes_on_400_are_transient(
    whatsapp_settings, provider_http, code
):
    provider_http.post(WHATSAPP_URL, json=meta_error(code), status=400)

    with pytest.raises(TransientError) as caught:
        get_channel("whatsapp").send(whatsapp())

    assert caught.value.code == str(code)


def test_whatsapp_500_is_transient(whatsapp_settings, provider_http):
    provider_http.post(WHATSAPP_URL, body="upstream exploded", status=502)

    with pytest.raises(TransientError):
        get_channel("whatsapp").send(whatsapp())


@pytest.mark.parametrize(
    "body", ['{"messaging_product": "whatsapp"}', '{"messages": []}', "<html>ok</html>"]
)
def test_whatsapp_200_with_malformed_body_is_transient(whatsapp_settings, provider_http, body):
    provider_http.post(WHATSAPP_URL, body=body, status=200)

    with pytest.raises(TransientError, match="malformed response") as caught:
        get_channel("whatsapp").send(whatsapp())

    assert caught.value.code == "malformed_response"


def test_whatsapp_timeout_is_transient(whatsapp_settings, provider_http):
    provider_http.post(WHATSAPP_URL, body=ConnectTimeout())

    with pytest.raises(TransientError):
        get_channel("whatsapp").send(whatsapp())


def test_whatsapp_without_template_is_permanent_and_calls_nobody(whatsapp_settings, provider_http):
    with pytest.raises(PermanentError) as caught:
        get_channel("whatsapp").send(whatsapp({"parameters": ["x"]}))

    assert caught.value.code == "missing_template"
    assert len(provider_http.calls) == 0


@pytest.mark.parametrize("missing", ["WHATSAPP_ACCESS_TOKEN", "WHATSAPP_PHONE_NUMBER_ID"])
def test_whatsapp_missing_settings_is_improperly_configured(whatsapp_settings, missing):
    setattr(whatsapp_settings, missing, "")

    with pytest.raises(ImproperlyConfigured, match=missing):
        get_channel("whatsapp")


# --- Email ----------------------------------------------------------------------------------


def test_email_sends_text_html_headers_attachment_and_tracking_data(settings, tmp_path):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    report = tmp_path / "report.csv"
    report.write_text("run,status\n7,stalled\n")
    message = email(
        html_body="<p>HTML</p>",
        payload={
            "headers": {"List-Unsubscribe": "<https://herald.test/u/abc>"},
            "attachments": [{"filename": "runs.csv", "path": str(report), "mimetype": "text/csv"}],
            "from_email": "Ops <ops@herald.test>",
            "tags": ["reminder"],
            "metadata": {"delivery": "41"},
        },
    )

    provider_id = get_channel("email").send(message)

    [sent] = mail.outbox
    assert sent.subject == "Your order"
    assert sent.body == "Plain text"
    assert sent.from_email == "Ops <ops@herald.test>"
    assert sent.to == ["ana@example.com"]
    assert sent.alternatives == [("<p>HTML</p>", "text/html")]
    assert sent.extra_headers["List-Unsubscribe"] == "<https://herald.test/u/abc>"
    assert sent.extra_headers["Message-ID"].endswith("@herald.test>")
    assert sent.attachments == [("runs.csv", "run,status\n7,stalled\n", "text/csv")]
    assert sent.anymail_test_params["tags"] == ["reminder"]
    assert sent.anymail_test_params["metadata"] == {"delivery": "41", "idempotency_key": "k-email"}
    # The test backend's id is the outbox index (an int); channels always return text.
    assert provider_id == str(sent.anymail_status.message_id)


def test_email_defaults_to_default_from_email(settings):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    settings.DEFAULT_FROM_EMAIL = "Herald <herald@herald.test>"

    get_channel("email").send(email())

    assert mail.outbox[0].from_email == "Herald <herald@herald.test>"
    assert mail.outbox[0].alternatives == []


def test_email_returns_the_message_id_it_set_when_the_backend_gives_none(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

    provider_id = get_channel("email").send(email())

    assert provider_id == mail.outbox[0].extra_headers["Message-ID"]
    assert provider_id in mail.outbox[0].message().as_string()


class QueueingBackend(LocmemEmailBackend):
    """A backend that queues what it is given and sends it later, as post-office's does: it
    answers 0 (sent now: none)."""

    def send_messages(self, messages):
        super().send_messages(messages)
        return 0


def test_a_backend_that_queues_and_answers_0_has_taken_the_message(settings):
    settings.EMAIL_BACKEND = f"{__name__}.QueueingBackend"

    provider_id = get_channel("email").send(email())

    assert provider_id == mail.outbox[0].extra_headers["Message-ID"]


def test_an_email_without_a_recipient_is_refused_before_any_backend(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    with pytest.raises(PermanentError, match="no recipient address"):
        get_channel("email").send(email(to=""))
    assert mail.outbox == []


def test_email_missing_attachment_is_permanent(settings, tmp_path):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    message = email(payload={"attachments": [{"path": str(tmp_path / "gone.pdf")}]})

    with pytest.raises(PermanentError):
        get_channel("email").send(message)

    assert mail.outbox == []


def test_email_postmark_success_returns_postmark_message_id(postmark_settings, provider_http):
    provider_http.post(
        POSTMARK_URL,
        json={
            "To": "ana@example.com",
            "SubmittedAt": "2025-01-01T00:00:00Z",
            "MessageID": "pm-0a1b2c",
            "ErrorCode": 0,
            "Message": "OK",
        },
    )

    assert get_channel("email").send(email()) == "pm-0a1b2c"
    sent = json.loads(provider_http.calls[0].request.body)
    assert sent["To"] == "ana@example.com"
    assert sent["Metadata"] == {"idempotency_key": "k-email"}


def test_an_anymail_http_backend_keeps_one_session_until_the_channel_is_closed(
    postmark_settings, provider_http, monkeypatch
):
    sessions = []
    create_session = AnymailRequestsBackend.create_session

    def spy(backend):
        sessions.append(create_session(backend))
        return sessions[-1]

    monkeypatch.setattr(AnymailRequestsBackend, "create_session", spy)
    answer = {"SubmittedAt": "2025-01-01T00:00:00Z", "ErrorCode": 0, "Message": "OK"}
    for n in range(3):
        provider_http.post(POSTMARK_URL, json={**answer, "To": f"{n}@e.com", "MessageID": f"m{n}"})
    provider_http.post(POSTMARK_URL, body="oops", status=500)
    channel = get_channel("email")
    ids = [channel.send(email(to=f"{n}@e.com")) for n in range(3)]
    with pytest.raises(TransientError):  # a failed send keeps the session for the next
        channel.send(email(to="3@e.com"))
    assert ids == ["m0", "m1", "m2"]
    assert len(sessions) == 1  # one session (one TLS connection pool) for all four
    assert len(provider_http.calls) == 4
    channel.close()
    provider_http.post(POSTMARK_URL, json={**answer, "To": "4@e.com", "MessageID": "m4"})
    assert channel.send(email(to="4@e.com")) == "m4"  # reopened after close
    assert len(sessions) == 2
    channel.close()


def test_email_postmark_500_is_transient(postmark_settings, provider_http):
    provider_http.post(POSTMARK_URL, body="oops", status=500)

    with pytest.raises(TransientError):
        get_channel("email").send(email())


def test_email_postmark_429_is_transient_with_retry_after(postmark_settings, provider_http):
    provider_http.post(POSTMARK_URL, body="slow down", status=429, headers={"Retry-After": "30"})

    with pytest.raises(TransientError) as caught:
        get_channel("email").send(email())

    assert caught.value.retry_after == 30


def test_email_postmark_422_invalid_request_is_permanent(postmark_settings, provider_http):
    provider_http.post(
        POSTMARK_URL,
        json={"ErrorCode": 300, "Message": "Invalid 'From' address: 'nope'."},
        status=422,
    )

    with pytest.raises(PermanentError):
        get_channel("email").send(email())


def test_email_postmark_inactive_recipient_is_permanent(postmark_settings, provider_http):
    provider_http.post(
        POSTMARK_URL,
        json={
            "ErrorCode": 406,
            "Message": "You tried to send to a recipient that has been marked as inactive.\n"
            "Found inactive addresses: ana@example.com.\n"
            "Inactive recipients are ones that have generated a hard bounce or a spam complaint.",
        },
        status=422,
    )

    with pytest.raises(PermanentError) as caught:
        get_channel("email").send(email())

    assert caught.value.code == "recipient_refused"


def test_email_postmark_timeout_is_transient(postmark_settings, provider_http):
    provider_http.post(POSTMARK_URL, body=ConnectTimeout())

    with pytest.raises(TransientError):
        get_channel("email").send(email())


def test_email_smtp_server_down_is_transient(settings):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 2

    with pytest.raises(TransientError):
        get_channel("email").send(email())


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP for Django's backend: one line a command, DATA up to '.'."""

    def handle(self):
        self.server.connections += 1
        self.wfile.write(b"220 test\r\n")
        while line := self.rfile.readline():
            command = line[:4].upper()
            if command == getattr(self.server, "drop_at", None):
                return  # the connection closes without an answer
            if command == b"DATA":
                self.wfile.write(b"354 go on\r\n")
                while self.rfile.readline() not in (b".\r\n", b""):
                    pass
                self.server.messages += 1
                if getattr(self.server, "drop_after_message", False):
                    return  # it has the message; its "250 queued" never comes
                self.wfile.write(b"250 queued\r\n")
            elif command == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:  # EHLO, MAIL, RCPT, RSET, NOOP
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def smtp_server(settings):
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.daemon_threads = True
    server.connections = server.messages = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", server.server_address[1]
    settings.EMAIL_TIMEOUT, settings.EMAIL_USE_TLS = 5, False
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("drop", "code"),
    [("at RCPT", "connection_error"), ("after the message", "no_answer")],
)
def test_an_smtp_connection_lost_says_whether_the_server_may_have_the_message(
    smtp_server, drop, code
):
    """Lost before DATA, the server has nothing: retried. Lost after the message went out,
    it may be queued there: dispatch leaves the delivery unknown rather than send twice."""
    if drop == "at RCPT":
        smtp_server.drop_at = b"RCPT"
    else:
        smtp_server.drop_after_message = True
    with pytest.raises(TransientError) as caught:
        get_channel("email").send(email())
    assert caught.value.code == code
    assert smtp_server.messages == (1 if drop == "after the message" else 0)


def test_over_smtp_each_send_opens_and_closes_its_own_connection(smtp_server):
    """The channel keeps one backend for the round but holds no SMTP connection open
    between sends, where an idle one could be dropped by the server unnoticed."""
    channel = get_channel("email")
    ids = [channel.send(email(to=f"{n}@example.com")) for n in range(3)]
    channel.close()
    assert len(set(ids)) == 3 and all(i.startswith("<") for i in ids)  # our Message-IDs
    assert (smtp_server.connections, smtp_server.messages) == (3, 3)


@pytest.mark.parametrize(
    ("exc", "permanent"),
    [
        (smtplib.SMTPRecipientsRefused({"ana@example.com": (550, b"no such user")}), True),
        (smtplib.SMTPRecipientsRefused({"ana@example.com": (450, b"greylisted")}), False),
        (smtplib.SMTPServerDisconnected("gone"), False),
        (smtplib.SMTPDataError(451, b"try later"), False),
        (smtplib.SMTPDataError(554, b"rejected as spam"), True),
        (TimeoutError("timed out"), False),
    ],
)
def test_email_smtp_errors_are_classified_by_reply_code(exc, permanent):
    assert classify_email_error(exc).permanent is permanent


@pytest.mark.parametrize(
    ("exc", "suppress"),
    [
        (smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"5.1.1 no such user")}), "bounce"),
        (smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"5.7.1 policy")}), ""),
        (  # about the sender, refused at RCPT (Postfix's smtpd_delay_reject)
            smtplib.SMTPRecipientsRefused(
                {"a@example.com": (550, b"5.1.0 <noreply@x>: Sender address rejected")}
            ),
            "",
        ),
        (
            smtplib.SMTPRecipientsRefused(
                {"a@example.com": (554, b"5.1.8 Sender address rejected: Domain not found")}
            ),
            "",
        ),
        (smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"5.1.10 null MX")}), "bounce"),
        (smtplib.SMTPRecipientsRefused({"a@example.com": (550, b"no such user")}), ""),
        (AnymailRecipientsRefused("rejected by the ESP"), "bounce"),
        (AnymailInvalidAddress("not an address"), ""),
        (smtplib.SMTPDataError(554, b"5.1.1 but about the data"), ""),
    ],
)
def test_only_a_refusal_of_the_mailbox_itself_suppresses_the_address(exc, suppress):
    assert getattr(classify_email_error(exc), "suppress", "") == suppress


# --- Recording backends ---------------------------------------------------------------------


@pytest.mark.django_db
def test_recording_sms_writes_one_row_and_returns_its_id(settings):
    from notifications.models import RecordedMessage

    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"

    provider_id = get_channel("sms").send(sms(payload={"from": "+15005550007"}))

    row = RecordedMessage.objects.get()
    assert provider_id.startswith("rec-")
    assert (row.channel, row.to, row.body, row.provider_message_id) == (
        "sms",
        PHONE,
        "Your kiosk",
        provider_id,
    )
    assert row.payload == {"from": "+15005550007"}


@pytest.mark.django_db
@pytest.mark.parametrize("number", ["+1415555", "14155550123", "+1 415 555 0123", "not a number"])
def test_recording_sms_refuses_invalid_numbers_and_records_nothing(settings, number):
    from notifications.models import RecordedMessage

    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"

    with pytest.raises(PermanentError) as caught:
        get_channel("sms").send(sms(to=number))

    assert caught.value.code == "invalid_number"
    assert not RecordedMessage.objects.exists()


@pytest.mark.django_db
def test_recording_whatsapp_writes_the_template_payload(settings):
    from notifications.models import RecordedMessage

    settings.WHATSAPP_BACKEND = "notifications.channels.recording.WhatsAppChannel"
    payload = {"template": "run_stalled", "language": "es", "parameters": ["Lote 7"]}

    provider_id = get_channel("whatsapp").send(whatsapp(payload, body="Lote 7 is stalled"))

    row = RecordedMessage.objects.get()
    assert (row.channel, row.to, row.body, row.payload) == (
        "whatsapp",
        PHONE,
        "Lote 7 is stalled",
        payload,
    )
    assert row.provider_message_id == provider_id


@pytest.mark.django_db
def test_recording_whatsapp_refuses_a_missing_template_and_records_nothing(settings):
    from notifications.models import RecordedMessage

    settings.WHATSAPP_BACKEND = "notifications.channels.recording.WhatsAppChannel"

    with pytest.raises(PermanentError):
        get_channel("whatsapp").send(whatsapp({"parameters": ["x"]}))
    with pytest.raises(PermanentError, match="E.164"):
        get_channel("whatsapp").send(whatsapp(to="+1415"))

    assert not RecordedMessage.objects.exists()


@pytest.mark.django_db
def test_recording_email_backend_writes_a_row_per_message(settings, tmp_path):
    from notifications.models import RecordedMessage

    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    report = tmp_path / "report.csv"
    report.write_text("a,b\n")
    message = email(
        html_body="<p>HTML</p>",
        payload={
            "headers": {"List-Unsubscribe": "<https://herald.test/u/abc>"},
            "attachments": [{"path": str(report), "mimetype": "text/csv"}],
        },
    )

    provider_id = get_channel("email").send(message)

    row = RecordedMessage.objects.get()
    assert (row.channel, row.to, row.subject, row.body, row.html_body) == (
        "email",
        "ana@example.com",
        "Your order",
        "Plain text",
        "<p>HTML</p>",
    )
    assert row.payload["attachments"] == ["report.csv"]
    assert row.payload["headers"]["List-Unsubscribe"] == "<https://herald.test/u/abc>"
    # EmailChannel returns the Message-ID it set; the row keeps it to link the two.
    assert row.payload["headers"]["Message-ID"] == provider_id
    assert row.provider_message_id.startswith("rec-")
    assert row.payload["headers"]["X-Recorded-Id"] == row.provider_message_id


@pytest.mark.django_db
def test_recording_email_refuses_an_invalid_address_and_records_nothing(settings):
    from notifications.models import RecordedMessage

    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"

    with pytest.raises(PermanentError):
        get_channel("email").send(email(to="not-an-address"))

    assert not RecordedMessage.objects.exists()


def test_email_subject_with_a_newline_is_permanent(settings):
    # Django's MIME serialization (SMTP, locmem) refuses header injection.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

    with pytest.raises(PermanentError) as caught:
        get_channel("email").send(email(subject="Hello\nBcc: everyone@example.com"))

    assert caught.value.code == "bad_header"


# --- Recording email backend: simulated failures (+fail, +reject) ----------------------------

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def _dispatch(now):
    return dispatch.dispatch_due(now=now, clock=ManualClock(now))


@pytest.mark.django_db
def test_recording_email_fails_a_plus_fail_address_transiently_like_an_smtp_451(settings):
    from notifications.models import RecordedMessage

    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"

    with pytest.raises(TransientError) as caught:
        get_channel("email").send(email(to="ana+fail@example.org"))

    assert caught.value.code == "451"
    assert "Simulated temporary failure" in caught.value.message
    assert not RecordedMessage.objects.exists()


@pytest.mark.django_db
def test_recording_email_rejects_a_plus_reject_address_permanently_like_an_smtp_550(settings):
    from notifications.models import RecordedMessage

    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"

    with pytest.raises(PermanentError) as caught:
        get_channel("email").send(email(to="Ana+REJECT@example.org"))

    assert caught.value.code == "550"
    assert not RecordedMessage.objects.exists()


@pytest.mark.django_db
def test_recording_email_sends_to_the_recipients_it_does_not_refuse(settings):
    """As Django's SMTP backend does when the server takes some recipients of a message."""
    from notifications.models import RecordedMessage

    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"

    assert mail.send_mail("Hi", "Body", None, ["ana+reject@example.org", "bo@example.org"]) == 1
    assert RecordedMessage.objects.get().to == "bo@example.org"
    # Addresses that merely contain the words are ordinary ones.
    get_channel("email").send(email(to="fail+ok@example.org"))
    get_channel("email").send(email(to="ana+failure@example.org"))
    assert RecordedMessage.objects.count() == 3


@pytest.mark.django_db
def test_a_plus_fail_address_is_retried_then_given_up_on(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    settings.DISPATCH_RETRY_JITTER = 0
    assert is_email_address("x+fail@example.org")  # what batch and the customer form accept
    delivery = DeliveryFactory(address="x+fail@example.org", send_at=NOW)

    now = NOW
    outcomes = []
    for _ in range(3):
        report = _dispatch(now)
        outcomes.append((report.retried, report.failed))
        delivery.refresh_from_db()
        now = delivery.send_at

    assert outcomes == [(1, 0), (1, 0), (0, 1)]
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert delivery.status_reason.startswith("gave up after 3 attempts")
    assert "451" in delivery.last_error
    assert [e.kind for e in delivery.events.all()] == ["retry", "retry", "failed"]
    assert not RecordedMessage.objects.exists()


@pytest.mark.django_db
def test_a_refused_mailbox_is_suppressed_and_its_next_message_skipped(settings):
    from notifications.models import Suppression

    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    first = DeliveryFactory(address="x+reject@example.org", send_at=NOW)

    assert _dispatch(NOW).failed == 1

    first.refresh_from_db()
    assert first.status_reason.endswith("(address suppressed)")
    suppression = Suppression.objects.get()
    assert (suppression.address, suppression.channel, suppression.reason) == (
        "x+reject@example.org",
        "email",
        "bounce",
    )
    assert suppression.source.startswith(f"refused when sent (delivery {first.id}): ")
    later = DeliveryFactory(address="X+Reject@example.org", send_at=NOW + timedelta(minutes=1))
    report = _dispatch(NOW + timedelta(minutes=1))
    assert (report.skipped, report.failed) == (1, 0)  # not tried again
    later.refresh_from_db()
    assert later.status == "skipped"


@pytest.mark.django_db
def test_an_sms_to_an_invalid_test_number_suppresses_it_a_busy_one_does_not(settings):
    from notifications.models import Suppression

    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"
    DeliveryFactory(channel="sms", address="+15005550001", subject="", send_at=NOW)
    DeliveryFactory(channel="sms", address="+15005550008", subject="", send_at=NOW)

    _dispatch(NOW)

    assert list(Suppression.objects.values_list("address", "channel", "reason")) == [
        ("+15005550001", "sms", "bounce")
    ]


@pytest.mark.django_db
def test_a_plus_reject_address_fails_at_once(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    assert is_email_address("x+reject@example.org")
    delivery = DeliveryFactory(address="x+reject@example.org", send_at=NOW)

    report = _dispatch(NOW)

    assert (report.failed, report.retried) == (1, 0)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("failed", 1)
    assert delivery.status_reason.startswith("permanent error")
    assert [e.kind for e in delivery.events.all()] == ["failed"]
    assert _dispatch(NOW + timedelta(minutes=5)).failed == 0
    assert not RecordedMessage.objects.exists()


@pytest.mark.django_db
def test_five_plus_fail_customers_in_a_row_trip_the_batch_breaker_and_resume_goes_on(settings):
    """What a new user can try from the seeds with the development backend alone."""
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    settings.BREAKER_THRESHOLD = 100  # the provider breaker is not under test here
    mike = User.objects.create_superuser("mike", "mike@example.com", "pw")
    for n, kind in enumerate("oxxxxxooo"):
        CustomerFactory(email=f"office{n}{'+fail' if kind == 'x' else ''}@school.example.org")
    run = batch.batch_launch(
        user=mike,
        now=NOW,
        cohort_filter="bid=B5875",
        subject="Holiday schedule for {{ customer_name }}",
        body_template="Dear {{ customer_name }},\nyour account {{ account_ref }}.",
    )
    envelope = run.proposed_actions.get(action_type="workflow_batch_notify")
    batch.envelope_approve(envelope=envelope, user=mike, now=NOW)
    reviews = run.proposed_actions.filter(action_type="hitl_review").values_list("id", flat=True)
    batch.reviews_decide(ids=reviews, approve=True, user=mike, now=NOW)

    _dispatch(NOW)

    run.refresh_from_db()
    assert run.status == "aborted"
    assert run.status_reason.startswith("circuit breaker: 5 consecutive failed sends")
    assert RecordedMessage.objects.count() == 1
    assert Delivery.objects.filter(workflow_run=run, status="scheduled").count() == 8

    assert batch.run_resume(run=run, user=mike, now=NOW)
    _dispatch(NOW + timedelta(minutes=1))

    run.refresh_from_db()
    assert RecordedMessage.objects.count() == 4  # the three good ones went after the resume
    # ... and the five +fail ones, tried a second time, failed in a row again.
    assert (run.status, run.consecutive_failures) == ("aborted", 5)


# --- Recording SMS and WhatsApp: simulated failures (Twilio's test numbers) ------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("channel", "message"),
    [("sms", sms), ("whatsapp", whatsapp)],
)
def test_recording_phone_channels_refuse_twilios_test_numbers_as_providers_would(
    settings, channel, message
):
    from notifications.models import RecordedMessage

    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"
    settings.WHATSAPP_BACKEND = "notifications.channels.recording.WhatsAppChannel"
    sender = get_channel(channel)

    with pytest.raises(PermanentError) as invalid:
        sender.send(message(to="+15005550001"))
    with pytest.raises(PermanentError) as landline:
        sender.send(message(to="+15005550009"))
    with pytest.raises(TransientError) as busy:
        sender.send(message(to="+15005550008"))

    assert (invalid.value.code, landline.value.code, busy.value.code) == ("21211", "21614", "503")
    assert f"Simulated permanent {channel} failure" in invalid.value.message
    assert not RecordedMessage.objects.exists()
    # Their neighbours are ordinary numbers.
    sender.send(message(to="+15005550006"))
    assert RecordedMessage.objects.get().to == "+15005550006"


@pytest.mark.django_db
def test_an_sms_to_the_busy_test_number_is_retried_then_given_up_on(settings):
    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"
    settings.DISPATCH_RETRY_JITTER = 0
    delivery = DeliveryFactory(channel="sms", address="+15005550008", subject="", send_at=NOW)

    now, outcomes = NOW, []
    for _ in range(3):
        report = _dispatch(now)
        outcomes.append((report.retried, report.failed))
        delivery.refresh_from_db()
        now = delivery.send_at

    assert outcomes == [(1, 0), (1, 0), (0, 1)]
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert "Simulated temporary sms failure" in delivery.last_error
    assert not RecordedMessage.objects.exists()


@pytest.mark.django_db
def test_five_sms_to_the_busy_test_number_open_the_provider_breaker(settings):
    from notifications.models import ProviderBreaker

    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"
    for _ in range(5):
        DeliveryFactory(channel="sms", address="+15005550008", subject="", send_at=NOW)
    later = DeliveryFactory(channel="sms", address="+15005550006", subject="", send_at=NOW)

    report = _dispatch(NOW)

    assert report.retried == 5
    assert ProviderBreaker.objects.get(provider="sms:recording").state == "open"
    later.refresh_from_db()
    assert later.status == "scheduled"  # held by the open breaker, not sent
