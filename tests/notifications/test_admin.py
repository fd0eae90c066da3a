from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from notifications.dispatch import dispatch_due
from notifications.models import Delivery, DeliveryEvent, MessageTemplate, RecordedMessage
from tests.notifications.factories import DeliveryFactory, MessageTemplateFactory

pytestmark = pytest.mark.django_db


def test_delivery_list_filters_by_status_and_searches_by_address(admin_client):
    DeliveryFactory(address="alice@example.com", status="failed")
    DeliveryFactory(address="bob@example.com", status="sent")
    url = reverse("admin:notifications_delivery_changelist")
    page = admin_client.get(url, {"status__exact": "failed"}).content.decode()
    assert "alice@example.com" in page and "bob@example.com" not in page
    page = admin_client.get(url, {"q": "bob@"}).content.decode()
    assert "bob@example.com" in page and "alice@example.com" not in page


def test_delivery_detail_shows_its_timeline_and_cannot_be_edited(admin_client):
    delivery = DeliveryFactory(status="sent", subject="Prices change")
    DeliveryEvent.objects.create(delivery=delivery, kind="sent", reason="accepted by anymail")
    url = reverse("admin:notifications_delivery_change", args=[delivery.pk])
    page = admin_client.get(url).content.decode()
    assert "Timeline" in page and "accepted by anymail" in page
    assert 'name="subject"' not in page  # read-only
    admin_client.post(url, {"subject": "Edited"})
    delivery.refresh_from_db()
    assert delivery.subject == "Prices change"


def test_retry_failed_action_reschedules_only_failed_rows(admin_client):
    failed = DeliveryFactory(status="failed", attempts=3)
    sent = DeliveryFactory(status="sent")
    data = {"action": "retry_failed", "_selected_action": [failed.pk, sent.pk]}
    url = reverse("admin:notifications_delivery_changelist")
    confirm = admin_client.post(url, data).content.decode()
    assert "Retrying schedules 1 failed deliveries again" in confirm
    failed.refresh_from_db()
    assert failed.status == "failed"  # nothing happens before the confirmation
    response = admin_client.post(url, {**data, "post": "yes"}, follow=True)
    failed.refresh_from_db()
    sent.refresh_from_db()
    assert (failed.status, failed.attempts) == ("scheduled", 0)
    assert failed.status_reason == "retry requested by admin"
    assert sent.status == "sent"
    assert "1 failed deliveries scheduled again." in response.content.decode()
    assert "1 were not failed and were left alone." in response.content.decode()


def test_retrying_a_list_filtered_to_failed_counts_no_one_left_alone(admin_client):
    """The changelist filtered by status=failed: after the retry the same filter selects
    none of them, which made the message say '-2 were not failed'."""
    failed = DeliveryFactory.create_batch(2, status="failed", attempts=3)
    url = reverse("admin:notifications_delivery_changelist") + "?status__exact=failed"
    data = {"action": "retry_failed", "_selected_action": [d.pk for d in failed], "post": "yes"}
    page = admin_client.post(url, data, follow=True).content.decode()
    assert "2 failed deliveries scheduled again." in page
    assert "were not failed" not in page


def test_cancel_scheduled_action(admin_client):
    scheduled = DeliveryFactory(send_at=timezone.now() + timedelta(hours=2))
    data = {"action": "cancel_scheduled", "_selected_action": [scheduled.pk]}
    url = reverse("admin:notifications_delivery_changelist")
    confirm = admin_client.post(url, data).content.decode()
    assert "Cancelling 1 scheduled deliveries: they will never be sent." in confirm
    admin_client.post(url, {**data, "post": "yes"})
    scheduled.refresh_from_db()
    assert scheduled.status == "cancelled"
    assert scheduled.events.get().kind == "cancelled"


def test_template_with_an_unknown_variable_is_refused_inline(admin_client):
    response = admin_client.post(
        reverse("admin:notifications_messagetemplate_add"),
        {
            "name": "Recall",
            "channel": "email",
            "message_type": "custom",
            "variables": '["customer_name"]',
            "subject": "Recall",
            "body": "Dear {{ customer }}",
            "whatsapp_template": "",
            "sample_context": "{}",
        },
    )
    assert response.status_code == 200
    assert (
        "Unknown variable in body: customer. Declare it in variables." in response.content.decode()
    )
    assert not MessageTemplate.objects.exists()


def test_template_page_previews_the_sample_values(admin_client):
    template = MessageTemplateFactory(
        sample_context={"customer_name": "Brooklyn Tech", "account_ref": "NYC-1"}
    )
    page = admin_client.get(
        reverse("admin:notifications_messagetemplate_change", args=[template.pk])
    ).content.decode()
    assert "Hello Brooklyn Tech" in page
    assert "your account NYC-1 is ready" in page


def test_seed_demo_shows_each_state_and_running_it_twice_changes_nothing():
    call_command("seed_demo")
    counts = {
        s: Delivery.objects.filter(status=s).count()
        for s in ("sent", "failed", "unknown", "expired", "scheduled")
    }
    assert all(counts.values()), counts
    assert set(MessageTemplate.objects.values_list("channel", flat=True)) == {
        "email",
        "sms",
        "whatsapp",
    }
    total, templates = Delivery.objects.count(), MessageTemplate.objects.count()
    call_command("seed_demo")
    assert Delivery.objects.count() == total
    assert MessageTemplate.objects.count() == templates
    assert not RecordedMessage.objects.exists()  # demo data records history, sends nothing


def test_the_idempotency_keys_help_text_shows_its_example(admin_client):
    """Its example was written in angle brackets, which the page took for HTML: 'e.g. :.'"""
    delivery = DeliveryFactory()
    page = admin_client.get(
        reverse("admin:notifications_delivery_change", args=[delivery.pk])
    ).content.decode()
    assert "At most one delivery per key, e.g. 12:345 (a batch's run id, customer id)." in page


@pytest.mark.parametrize(
    "action, status, reason",
    [
        ("reconcile_sent", "sent", "reconciled by admin: the provider has it"),
        ("reconcile_failed", "failed", "reconciled by admin: the provider does not have it"),
    ],
)
def test_a_person_reconciles_an_unknown_delivery_and_nothing_is_resent(
    admin_client, action, status, reason
):
    unknown = DeliveryFactory(status="unknown", status_reason="worker stopped while sending")
    scheduled = DeliveryFactory()
    url = reverse("admin:notifications_delivery_changelist")
    data = {"action": action, "_selected_action": [unknown.pk, scheduled.pk]}
    confirm = admin_client.post(url, data).content.decode()
    assert f"marked {status}" in confirm
    unknown.refresh_from_db()
    assert unknown.status == "unknown"  # nothing before the confirmation
    page = admin_client.post(url, {**data, "post": "yes"}, follow=True).content.decode()
    assert f"1 unknown deliveries marked {status}." in page
    assert "1 were not unknown and were left alone." in page
    unknown.refresh_from_db()
    assert (unknown.status, unknown.status_reason) == (status, reason)
    assert unknown.events.get().kind == status
    assert Delivery.objects.get(pk=scheduled.pk).status == "scheduled"
    assert dispatch_due(now=timezone.now()).sent == 1  # only the scheduled one


def test_reconciling_one_delivery_with_its_provider_message_id_applies_its_tracking(
    admin_client,
):
    """Before, a reconciled delivery had no message id: the provider's reports for it stayed
    unmatched for good."""
    from notifications.models import UnmatchedProviderEvent

    now = timezone.now()
    unknown = DeliveryFactory(status="unknown", status_reason="worker stopped while sending")
    DeliveryFactory(status="sent", provider_message_id="pm-taken")
    report = UnmatchedProviderEvent.objects.create(
        provider="postmark",
        provider_message_id="pm-77",
        kind="delivered",
        provider_event_id="ev-1",
        at=now,
        data={},
        received_at=now,
    )
    url = reverse("admin:notifications_delivery_changelist")
    data = {"action": "reconcile_sent", "_selected_action": [unknown.pk]}
    assert 'name="provider_message_id"' in admin_client.post(url, data).content.decode()
    page = admin_client.post(
        url, {**data, "post": "yes", "provider_message_id": "pm-taken"}, follow=True
    ).content.decode()
    assert "The provider message id pm-taken is another delivery&#x27;s" in page
    unknown.refresh_from_db()
    assert (unknown.status, unknown.provider_message_id) == ("unknown", "")  # nothing changed
    admin_client.post(url, {**data, "post": "yes", "provider_message_id": " pm-77 "})
    unknown.refresh_from_db()
    assert (unknown.status, unknown.provider_message_id) == ("delivered", "pm-77")
    assert list(unknown.events.order_by("id").values_list("kind", flat=True)) == [
        "sent",
        "delivered",
    ]
    report.refresh_from_db()
    assert report.matched_delivery_id == unknown.pk
    two = [DeliveryFactory(status="unknown").pk for _ in range(2)]
    confirm = admin_client.post(url, {"action": "reconcile_sent", "_selected_action": two})
    assert 'name="provider_message_id"' not in confirm.content.decode()  # one id, one message
    from notifications import operations

    with pytest.raises(ValueError, match="goes with one delivery the provider has"):
        operations.delivery_reconcile(
            ids=two, accepted=True, now=now, by="admin", provider_message_id="pm-9"
        )
    assert Delivery.objects.filter(pk__in=two, status="unknown").count() == 2


def test_a_batch_launchs_template_is_a_read_only_record_filtered_apart(admin_client):
    from django.contrib.auth.models import User

    from notifications import batch
    from tests.notifications.factories import CustomerFactory

    CustomerFactory(bid="B1")
    run = batch.batch_launch(
        user=User.objects.get(username="admin"),
        now=timezone.now(),
        cohort_filter="bid=B1",
        subject="Hello {{ customer_name }}",
        body_template="Dear {{ customer_name }}",
    )
    record = MessageTemplate.objects.get(batch_run=run)
    reusable = MessageTemplate.objects.create(
        name="Reusable", channel="email", subject="Hi", body="Hello"
    )
    changelist = reverse("admin:notifications_messagetemplate_changelist")
    staff = admin_client.get(changelist, {"made_by": "staff"}).content.decode()
    assert reusable.name in staff and record.name not in staff
    records = admin_client.get(changelist, {"made_by": "batch"}).content.decode()
    assert record.name in records and reusable.name not in records
    assert f"batch run {run.id}" in records

    change = reverse("admin:notifications_messagetemplate_change", args=[record.id])
    page = admin_client.get(change).content.decode()
    assert 'name="body"' not in page  # shown, not editable
    assert 'name="_save"' not in page
    saved = admin_client.post(change, {"name": "edited", "channel": "email", "body": "changed"})
    assert saved.status_code == 403
    before = record.updated_at
    record.refresh_from_db()
    assert record.updated_at == before
    assert (record.name, record.body) == (f"batch_notify run {run.id}", "Dear {{ customer_name }}")
    delete = reverse("admin:notifications_messagetemplate_delete", args=[record.id])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert MessageTemplate.objects.filter(id=record.id).exists()


def test_admin_pages_write_times_as_herald_does(admin_client):
    at = timezone.now().replace(year=2026, month=11, day=23, hour=14, minute=5, second=9)
    delivery = DeliveryFactory(status="scheduled", send_at=at)
    listing = admin_client.get(reverse("admin:notifications_delivery_changelist")).content
    detail = admin_client.get(reverse("admin:notifications_delivery_change", args=[delivery.pk]))
    for page in (listing.decode(), detail.content.decode()):
        assert "2026-11-23 14:05:09" in page
        assert "2:05 p.m." not in page


def test_admin_pages_carry_herald_s_icon_and_title(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert '<link rel="icon" href="data:image/svg+xml,' in page
    assert "<title>Operations | Herald</title>" in page


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("retry_base_seconds", -1),
        ("retry_base_seconds", 1e12),
        ("retry_max_seconds", 1e12),
        ("retry_max_attempts", 0),
        ("retry_max_attempts", 40_000),
    ],
)
def test_a_workflow_refuses_retries_dispatch_cannot_follow(field, value):
    """A negative wait, or one that overflows the time it is added to, is refused where it
    is given (the admin's form validates the model's fields); so are 0 attempts (taken as 1)
    and 40,000."""
    from django.core.exceptions import ValidationError

    from tests.notifications.factories import WorkflowFactory

    workflow = WorkflowFactory(risk_level=4)
    setattr(workflow, field, value)
    with pytest.raises(ValidationError) as refused:
        workflow.full_clean()
    assert set(refused.value.message_dict) == {field}


@pytest.mark.django_db
def test_a_batch_workflows_risk_cannot_drop_below_3_and_a_change_is_audited(admin_client):
    """Lowering it from 4 to 1 released its deliveries from the high_risk_ops kill switch,
    saved without a word and unaudited."""
    from notifications import batch
    from notifications.models import AuditEntry

    workflow = batch.batch_workflow()
    url = reverse("admin:notifications_workflow_change", args=[workflow.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {
        name: ("on" if value is True else "" if value in (None, False) else value)
        for name, value in ((n, form[n].value()) for n in form.fields)
    }
    data = {k: v for k, v in data.items() if v != ""}

    refused = admin_client.post(url, {**data, "risk_level": 1})
    assert refused.status_code == 200
    assert "its risk stays 3 or more" in refused.content.decode()
    workflow.refresh_from_db()
    assert workflow.risk_level == 4 and not AuditEntry.objects.exists()

    assert admin_client.post(url, {**data, "risk_level": 5}).status_code == 302
    entry = AuditEntry.objects.get(action="workflow_risk_change")
    assert (entry.target, entry.detail) == (f"workflow:{workflow.pk}", {"from": 4, "to": 5})


@pytest.mark.django_db
def test_a_deliverys_read_only_page_offers_no_save(admin_client):
    delivery = DeliveryFactory()
    page = admin_client.get(
        reverse("admin:notifications_delivery_change", args=[delivery.pk])
    ).content.decode()
    assert delivery.address in page
    assert 'name="_save"' not in page and 'name="_continue"' not in page
