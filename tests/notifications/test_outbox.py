from datetime import UTC, datetime

import pytest

from notifications import templating
from notifications.models import Delivery
from notifications.outbox import Recipient, stage_deliveries
from tests.notifications.factories import NotificationFactory, WorkflowRunFactory

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


def _recipients(n):
    return [
        Recipient(
            f"customer:{i}",
            f"c{i}@example.com",
            {"customer_name": f"Customer {i}", "account_ref": f"A-{i}"},
        )
        for i in range(n)
    ]


def test_each_recipient_gets_a_personalized_row_keyed_by_run_and_recipient():
    run = WorkflowRunFactory(workflow__retry_max_attempts=4)
    notification = NotificationFactory(workflow_run=run)
    created = stage_deliveries(
        notification=notification, recipients=_recipients(3), now=NOW, key_prefix=str(run.id)
    )
    assert created == 3
    rows = list(Delivery.objects.order_by("recipient_key"))
    assert [r.idempotency_key for r in rows] == [f"{run.id}:customer:{i}" for i in range(3)]
    assert rows[1].subject == "Hello Customer 1"
    assert rows[1].body == "Dear Customer 1,\nyour account A-1 is ready."
    assert "<p>Dear Customer 1,<br>your account A-1 is ready.</p>" in rows[1].html_body
    assert {r.max_attempts for r in rows} == {4}
    assert {r.send_at for r in rows} == {NOW}


def test_staging_the_same_recipients_again_adds_nothing():
    notification = NotificationFactory()
    stage_deliveries(notification=notification, recipients=_recipients(3), now=NOW, key_prefix="r1")
    again = stage_deliveries(
        notification=notification, recipients=_recipients(4), now=NOW, key_prefix="r1"
    )
    assert again == 1
    assert Delivery.objects.count() == 4


def test_a_template_compiles_once_per_batch_not_once_per_message(monkeypatch):
    compiled_sources = []
    original = templating._ENGINE.from_string

    def counting(source):
        compiled_sources.append(source)
        return original(source)

    monkeypatch.setattr(templating._ENGINE, "from_string", counting)
    stage_deliveries(
        notification=NotificationFactory(), recipients=_recipients(50), now=NOW, key_prefix="b"
    )
    assert len(compiled_sources) == 2  # subject and body, once each
    assert Delivery.objects.count() == 50


def test_whatsapp_rows_carry_the_template_name_and_ordered_parameters():
    notification = NotificationFactory(
        template__channel="whatsapp",
        template__subject="",
        template__whatsapp_template="production_run_idle_reminder",
        template__body="{{ partner_name }} {{ run_id }}",
        template__variables=["partner_name", "run_id"],
    )
    stage_deliveries(
        notification=notification,
        recipients=[
            Recipient("partner:1", "+919812345678", {"partner_name": "Asha", "run_id": 42})
        ],
        now=NOW,
        key_prefix="wa",
    )
    assert Delivery.objects.get().payload == {
        "template": "production_run_idle_reminder",
        "parameters": ["Asha", "42"],
    }


def test_email_carries_a_one_click_unsubscribe_that_works_end_to_end(client, settings):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    from django.core import mail

    from notifications.dispatch import ManualClock, dispatch_due
    from notifications.models import Suppression

    stage_deliveries(
        notification=NotificationFactory(),
        recipients=_recipients(1),
        now=NOW,
        key_prefix="u",
    )
    dispatch_due(now=NOW, clock=ManualClock(NOW))
    message = mail.outbox[0]
    assert message.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = message.extra_headers["List-Unsubscribe"].strip("<>")
    assert link.startswith(f"{settings.SITE_URL}/unsubscribe/")
    html = message.alternatives[0][0]
    assert link in html  # the footer link too

    path = link.removeprefix(settings.SITE_URL)
    response = client.post(path, {"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert Suppression.objects.get().address == "c0@example.com"
