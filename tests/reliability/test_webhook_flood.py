"""A flood of valid callbacks is answered with a constant, small amount of work per request;
the tracking work itself is done by the worker. A replayed batch changes nothing."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from twilio.request_validator import RequestValidator

from notifications.models import Delivery, DeliveryEvent, ProviderReport
from notifications.tasks import apply_reports_task
from tests.notifications.factories import DeliveryFactory

pytestmark = pytest.mark.django_db
URL = "/webhooks/twilio/status"


@pytest.fixture
def signed(settings):
    settings.TRACKING_APPLY = "celery"
    settings.TWILIO_AUTH_TOKEN = "flood-token"
    validator = RequestValidator("flood-token")

    def post(client, params):
        signature = validator.compute_signature(f"{settings.SITE_URL}{URL}", params)
        return client.post(URL, params, HTTP_X_TWILIO_SIGNATURE=signature)

    return post


def test_a_thousand_callbacks_are_stored_fast_and_applied_by_the_worker(client, signed):
    sids = [f"SM{i:032d}" for i in range(1000)]
    for sid in sids:
        DeliveryFactory(
            channel="sms",
            address="+14155550100",
            status="sent",
            provider="twilio",
            provider_message_id=sid,
        )
    queries = []
    for sid in sids:
        with CaptureQueriesContext(connection) as captured:
            response = signed(client, {"MessageSid": sid, "MessageStatus": "delivered"})
        assert response.status_code == 200
        queries.append(len(captured))
    assert max(queries) <= 3  # one insert (plus savepoint bookkeeping), whatever the flood
    assert ProviderReport.objects.filter(processed_at__isnull=True).count() == 1000
    assert not Delivery.objects.filter(status="delivered").exists()  # not yet: the worker's job

    assert apply_reports_task() == 1000
    assert Delivery.objects.filter(status="delivered").count() == 1000
    assert DeliveryEvent.objects.filter(kind="delivered").count() == 1000

    for sid in sids[:200]:  # the whole batch replayed
        signed(client, {"MessageSid": sid, "MessageStatus": "delivered"})
    apply_reports_task()
    assert DeliveryEvent.objects.filter(kind="delivered").count() == 1000
    assert set(ProviderReport.objects.filter(outcome__gt="").values_list("outcome", flat=True)) == {
        "recorded",
        "duplicate",
    }


def test_a_forged_callback_in_the_flood_writes_nothing(client, signed, settings):
    DeliveryFactory(channel="sms", status="sent", provider="twilio", provider_message_id="SM1")
    response = client.post(
        URL, {"MessageSid": "SM1", "MessageStatus": "delivered"}, HTTP_X_TWILIO_SIGNATURE="forged"
    )
    assert response.status_code == 403
    assert not ProviderReport.objects.exists()
