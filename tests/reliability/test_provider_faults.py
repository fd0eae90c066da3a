"""Provider faults, faked at the HTTP layer, through the whole dispatch path: each is
retried by policy or settled with its reason; nothing is sent twice."""

from datetime import UTC, datetime, timedelta

import pytest
import responses
from requests.exceptions import ConnectTimeout, ReadTimeout

from notifications.dispatch import ManualClock, dispatch_due
from tests.notifications.factories import DeliveryFactory

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db

POSTMARK = "https://api.postmarkapp.com/email"
TWILIO = "https://api.twilio.com/2010-04-01/Accounts/AC123/Messages.json"
GRAPH = "https://graph.facebook.com/v21.0/1055/messages"


@pytest.fixture(autouse=True)
def providers(settings):
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "x"}
    settings.SMS_BACKEND = "notifications.channels.sms.TwilioSMSChannel"
    settings.TWILIO_ACCOUNT_SID, settings.TWILIO_AUTH_TOKEN = "AC123", "token"
    settings.TWILIO_FROM_NUMBER, settings.TWILIO_MESSAGING_SERVICE_SID = "+15005550006", ""
    settings.WHATSAPP_BACKEND = "notifications.channels.whatsapp.CloudAPIWhatsAppChannel"
    settings.WHATSAPP_GRAPH_URL = "https://graph.facebook.com/v21.0"
    settings.WHATSAPP_PHONE_NUMBER_ID, settings.WHATSAPP_ACCESS_TOKEN = "1055", "token"
    settings.DISPATCH_RETRY_JITTER = 0


DELIVERY = {
    "email": {"channel": "email", "address": "ana@example.com"},
    "sms": {"channel": "sms", "address": "+14155550100"},
    "whatsapp": {"channel": "whatsapp", "address": "+919812345678", "payload": {"template": "t"}},
}
URL = {"email": POSTMARK, "sms": TWILIO, "whatsapp": GRAPH}


def _refused():
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    reason = NewConnectionError(None, "Failed to establish a new connection: refused")
    return RequestsConnectionError(MaxRetryError(None, "/", reason=reason))


FAULTS = {
    "connect timeout": {"body": ConnectTimeout("connect timed out")},
    "connection refused": {"body": _refused()},
    "429 retry-after": {
        "status": 429,
        "json": {"message": "slow down", "code": 20429},
        "headers": {"Retry-After": "20"},
    },
    "503": {"status": 503, "body": "upstream unavailable"},
}


@pytest.mark.parametrize("channel", ["email", "sms", "whatsapp"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_transient_faults_are_retried_by_policy_with_the_reason(channel, fault):
    delivery = DeliveryFactory(send_at=NOW, **DELIVERY[channel])
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, URL[channel], **FAULTS[fault])
        report = dispatch_due(now=NOW, clock=ManualClock(NOW))
        assert len(mock.calls) == 1
    assert report.retried == 1
    delivery.refresh_from_db()
    assert delivery.status == "scheduled" and delivery.attempts == 1
    assert delivery.last_error
    assert delivery.status_reason.startswith("attempt 1/3 failed")
    wait = (delivery.send_at - NOW).total_seconds()
    assert wait >= (20 if fault == "429 retry-after" and channel != "sms" else 2)


@pytest.mark.parametrize("channel", ["email", "sms", "whatsapp"])
def test_no_answer_after_the_request_went_out_is_never_resent_blindly(channel):
    """A read timeout was retried like a refused connection: the provider that had taken the
    message got it twice. It is now "unknown", for a person to check and reconcile."""
    delivery = DeliveryFactory(send_at=NOW, **DELIVERY[channel])
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, URL[channel], body=ReadTimeout("read timed out"))
        report = dispatch_due(now=NOW, clock=ManualClock(NOW))
        later = NOW + timedelta(minutes=5)
        dispatch_due(now=later, clock=ManualClock(later))
        assert len(mock.calls) == 1
    assert report.retried == 0
    delivery.refresh_from_db()
    assert delivery.status == "unknown"
    assert "did not answer after the request went out" in delivery.status_reason
    assert "check before resending" in delivery.status_reason


@pytest.mark.parametrize("channel", ["email", "whatsapp"])
def test_an_unreadable_ok_is_never_resent_blindly(channel):
    delivery = DeliveryFactory(send_at=NOW, **DELIVERY[channel])
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, URL[channel], status=200, body="<html>gateway</html>")
        dispatch_due(now=NOW, clock=ManualClock(NOW))
        dispatch_due(now=NOW + timedelta(minutes=5), clock=ManualClock(NOW + timedelta(minutes=5)))
        assert len(mock.calls) == 1
    delivery.refresh_from_db()
    assert delivery.status == "unknown"
    assert "check before resending" in delivery.status_reason


@pytest.mark.parametrize("channel", ["email", "sms", "whatsapp"])
def test_three_transient_failures_fail_the_delivery_with_its_reason(channel):
    delivery = DeliveryFactory(send_at=NOW, **DELIVERY[channel])
    now = NOW
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, URL[channel], status=503, body="down")
        for _ in range(3):
            dispatch_due(now=now, clock=ManualClock(now))
            delivery.refresh_from_db()
            now = max(now, delivery.send_at)
        assert len(mock.calls) == 3
    assert delivery.status == "failed"
    assert delivery.status_reason.startswith("gave up after 3 attempts")
