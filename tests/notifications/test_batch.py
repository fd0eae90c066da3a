"""Batch customer notification (seeds 000/001): each failure mode the seed lists."""

import json
from datetime import UTC, datetime, timedelta

import pytest
import responses
import time_machine
from django.contrib.auth.models import Permission, User
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from notifications import batch, dispatch, operations
from notifications.dispatch import ManualClock
from notifications.models import (
    AuditEntry,
    Delivery,
    Event,
    KillSwitch,
    ProposedAction,
    ReflexionEntry,
    Suppression,
    VerifyCheck,
    WorkflowRun,
)
from notifications.unsubscribe import read_token
from tests.notifications.factories import CustomerFactory, DeliveryFactory

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POSTMARK_URL = "https://api.postmarkapp.com/email"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def recording_email(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"


def _launch(user, *, query="bid=B5875", now=NOW, **kwargs):
    values = {
        "cohort_filter": query,
        "subject": "Holiday schedule for {{ customer_name }}",
        "body_template": "Dear {{ customer_name }},\n"
        "your account {{ account_ref }} ({{ school_year }}).",
    }
    values.update(kwargs)
    return batch.batch_launch(user=user, now=now, **values)


def _approve_all(run, user, now=NOW):
    envelope = run.proposed_actions.get(action_type="workflow_batch_notify")
    batch.envelope_approve(envelope=envelope, user=user, now=now)
    ids = run.proposed_actions.filter(action_type="hitl_review").values_list("id", flat=True)
    return batch.reviews_decide(ids=ids, approve=True, user=user, now=now)


def _dispatch(now=NOW):
    return dispatch.dispatch_due(now=now, clock=ManualClock(now))


def test_a_bad_cohort_filter_is_an_error_naming_the_field(mike):
    with pytest.raises(ValidationError) as caught:
        _launch(mike, query="bid=B5875&colour=red")
    assert "Unknown filter field colour" in caught.value.message_dict["customer_cohort_filter"][0]
    with pytest.raises(ValidationError) as caught:
        _launch(mike, query="bid=B5875&=red")
    assert caught.value.message_dict["customer_cohort_filter"][0].startswith(
        "The filter part '=red' has no field name before its '='; write field=value"
    )
    assert not WorkflowRun.objects.exists()


def test_every_wrong_part_of_a_cohort_filter_is_named_at_once(mike):
    with pytest.raises(ValidationError) as caught:
        _launch(mike, query="colour=red&=blue&bid=&region=a&region=b&shade=")
    messages = caught.value.message_dict["customer_cohort_filter"]
    assert len(messages) == 4
    assert messages[0].startswith("The filter part '=blue' has no field name")
    assert messages[1].startswith("Unknown filter field colour, shade; use bid")
    assert messages[2] == "The filter field bid has no value."
    assert messages[3].startswith("The filter field region is given more than once")
    assert not WorkflowRun.objects.exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("99999999999999999999999", "Ensure this value is less than or equal to"),
        ("1.5", "Enter a whole number."),  # was cut to 1: the wrong customer
        ("0", "Ensure this value is greater than or equal to 1."),
        ("1e30", "Enter a whole number."),
    ],
)
def test_an_id_that_is_no_customer_id_is_refused_on_the_field(mike, value, message):
    CustomerFactory(bid="B5875")
    with pytest.raises(ValidationError) as caught:
        _launch(mike, query=f"id={value}")
    (error,) = caught.value.message_dict["customer_cohort_filter"]
    assert error.startswith(f"Invalid filter: id: {message}")
    assert not WorkflowRun.objects.exists()


def test_spaces_around_filter_names_and_values_are_the_typing_s(mike):
    wanted = CustomerFactory(bid="B5875", region="NYC DOE")
    CustomerFactory(bid="B5875", region="Long Island")
    run = _launch(mike, query="bid=B5875 & region = NYC DOE ")
    assert run.inputs["customer_ids"] == [wanted.id]


def test_a_tag_filter_matches_whole_tags_only(mike):
    tagged = {
        tags: CustomerFactory(tags=tags).id
        for tags in ("walk10", "vip, Walk10 ", "walk10b", "old-walk10", "x,walk10,y", "")
    }
    run = _launch(mike, query="tag=walk10")
    assert sorted(run.inputs["customer_ids"]) == sorted(
        tagged[t] for t in ("walk10", "vip, Walk10 ", "x,walk10,y")
    )
    dotted, _ = CustomerFactory(tags="a.b"), CustomerFactory(tags="aXb")
    preview = batch.build_preview(
        cohort_filter="tag=a.b", subject="s", body_template="b", max_recipients=None, now=NOW
    )
    assert preview.recipients == [dotted]  # the dot is a dot, not "any character"


def test_personalization_per_recipient_after_the_hitl_gate(mike):
    CustomerFactory(company_name="Brooklyn Tech", account_ref="NYC-1")
    CustomerFactory(company_name="Stuyvesant", account_ref="NYC-2")
    CustomerFactory(bid="OTHER")
    run = _launch(mike)
    envelope = run.proposed_actions.get()
    assert (run.status, envelope.entity_ref) == (
        "awaiting_approval",
        f"workflow:batch_notify:run_{run.id}",
    )
    assert not Delivery.objects.exists()  # nothing before the gate

    assert batch.envelope_approve(envelope=envelope, user=mike, now=NOW) == 2
    reviews = {
        r.customer.company_name: r for r in run.proposed_actions.filter(action_type="hitl_review")
    }
    assert reviews["Brooklyn Tech"].subject == "Holiday schedule for Brooklyn Tech"
    assert reviews["Stuyvesant"].body == "Dear Stuyvesant,\nyour account NYC-2 (2026-27)."
    assert (
        batch.envelope_approve(envelope=envelope, user=mike, now=NOW) == 0
    )  # second approve: no-op


def test_approved_recipients_become_deliveries_keyed_by_run_and_customer(mike):
    customers = CustomerFactory.create_batch(3)
    run = _launch(mike)
    decided = _approve_all(run, mike)
    assert (decided.decided, decided.deliveries) == (3, 3)
    keys = set(Delivery.objects.values_list("idempotency_key", flat=True))
    assert keys == {f"{run.id}:{c.id}" for c in customers}
    # Idempotency hit on retry / double approve: a no-op, logged, nothing new.
    again = _approve_all(run, mike)
    assert (again.decided, again.already_decided, again.deliveries) == (0, 3, 0)
    assert Delivery.objects.count() == 3


def test_per_recipient_reject_sends_to_the_rest_only(mike):
    keep, drop = CustomerFactory.create_batch(2)
    run = _launch(mike)
    batch.envelope_approve(envelope=run.proposed_actions.get(), user=mike, now=NOW)
    reviews = run.proposed_actions.filter(action_type="hitl_review")
    batch.reviews_decide(ids=[reviews.get(customer=drop).id], approve=False, user=mike, now=NOW)
    batch.reviews_decide(ids=[reviews.get(customer=keep).id], approve=True, user=mike, now=NOW)
    _dispatch()
    assert list(Delivery.objects.values_list("address", "status")) == [(keep.email, "sent")]
    run.refresh_from_db()
    assert run.status == "partial"


def test_the_recipient_cap_blocks_the_launch_and_writes_nothing(mike):
    CustomerFactory.create_batch(51)
    with pytest.raises(batch.BatchBlocked) as caught:
        _launch(mike)
    assert "51 recipients is over the cap of 50" in caught.value.messages[0]
    assert not WorkflowRun.objects.exists() and not ProposedAction.objects.exists()


def test_the_cap_is_counted_after_suppressions(mike):
    customers = CustomerFactory.create_batch(51)
    Suppression.objects.create(address=customers[0].email, channel="email", reason="bounce")
    run = _launch(mike)
    assert len(run.inputs["customer_ids"]) == 50
    assert run.inputs["suppressed"] == [customers[0].id]


def test_customers_whose_address_is_not_an_email_address_are_left_out(mike):
    """An import can store anything; sending to it would fail at the provider and count
    towards the batch's breaker."""
    good = CustomerFactory()
    bad = [CustomerFactory(email=address) for address in ("broken2@@example", "no-at-sign")]
    run = _launch(mike)
    assert run.inputs["customer_ids"] == [good.id]
    assert run.inputs["invalid_address"] == [c.id for c in bad]
    batch.envelope_approve(envelope=run.proposed_actions.get(), user=mike, now=NOW)
    assert set(
        run.proposed_actions.filter(action_type="hitl_review").values_list("customer_id", flat=True)
    ) == {good.id}


def test_an_audited_max_recipients_override_passes(mike):
    CustomerFactory.create_batch(51)
    run = _launch(mike, max_recipients=60)
    audit = AuditEntry.objects.get()
    assert (audit.by, audit.action, audit.detail) == (
        "mike",
        "max_recipients_override",
        {"max_recipients": 60, "recipients": 51},
    )
    assert audit.target == f"workflow:batch_notify:run_{run.id}"


def test_the_override_needs_its_permission(db):
    CustomerFactory.create_batch(3)
    clerk = User.objects.create_user("clerk", is_staff=True)
    clerk.user_permissions.set(Permission.objects.filter(codename="launch_batch"))
    with pytest.raises(ValidationError) as caught:
        _launch(clerk, max_recipients=60)
    assert "cap-override permission" in caught.value.message_dict["max_recipients"][0]
    assert _launch(clerk, max_recipients=10).inputs["max_recipients"] == 10


@pytest.mark.parametrize("value", [-1, 0, 10_000_000, "many"])
def test_negative_zero_huge_or_text_max_recipients_is_refused(mike, value):
    CustomerFactory()
    with pytest.raises(ValidationError):
        _launch(mike, max_recipients=value)
    assert not WorkflowRun.objects.exists()


def test_launching_needs_the_launch_permission(db):
    CustomerFactory()
    clerk = User.objects.create_user("clerk", is_staff=True)
    with pytest.raises(PermissionDenied):
        _launch(clerk)


def test_the_kill_switch_blocks_a_launch(mike):
    CustomerFactory()
    KillSwitch.objects.create(name="high_risk_ops", scope="high_risk_ops", is_on=True)
    with pytest.raises(batch.BatchBlocked) as caught:
        _launch(mike)
    assert caught.value.messages == ["The kill switch high_risk_ops is on: launches are blocked."]
    assert not WorkflowRun.objects.exists()


def test_the_48_hour_warning_lists_exactly_the_recently_emailed(mike):
    recent, old, fresh = CustomerFactory.create_batch(3)
    first = _launch(mike, query=f"id={recent.id},{old.id}")
    _approve_all(first, mike, now=NOW - timedelta(hours=72))
    _dispatch(NOW - timedelta(hours=72))
    Delivery.objects.filter(recipient_key=f"customer:{recent.id}").update(
        sent_at=NOW - timedelta(hours=47)
    )

    preview = batch.build_preview(
        cohort_filter="bid=B5875", subject="s", body_template="b", max_recipients=None, now=NOW
    )
    assert [c for c, _ in preview.recently_emailed] == [recent]
    with pytest.raises(batch.NeedsConfirmation) as caught:
        _launch(mike)
    assert recent.company_name in caught.value.messages[0]
    assert old.company_name not in caught.value.messages[0]
    run = _launch(mike, confirm_recent=True)  # a warn, not a block: Mike confirms
    assert len(run.inputs["customer_ids"]) == 3


@pytest.fixture
def postmark(settings):
    """A real anymail ESP backend whose HTTP answers fail for addresses containing 'bad'."""
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "x"}

    def answer(request):
        to = json.loads(request.body)["To"]
        if "bad" in to:
            refusal = {"ErrorCode": 300, "Message": f"Invalid 'To' address: '{to}'."}
            return 422, {}, json.dumps(refusal)
        return (
            200,
            {},
            json.dumps({"To": to, "MessageID": f"pm-{to}", "ErrorCode": 0, "Message": "OK"}),
        )

    with responses.RequestsMock() as mock:
        mock.add_callback(responses.POST, POSTMARK_URL, callback=answer)
        yield mock


def _customers(pattern):
    return [
        CustomerFactory(email=f"{'bad' if kind == 'x' else 'ok'}{i:02d}@school.example.org")
        for i, kind in enumerate(pattern)
    ]


def test_the_breaker_trips_after_exactly_five_consecutive_failures(mike, postmark):
    _customers("oxxxxxooo")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    run.refresh_from_db()
    assert run.status == "aborted"
    assert run.status_reason.startswith("circuit breaker: 5 consecutive failed sends")
    statuses = list(Delivery.objects.order_by("id").values_list("status", flat=True))
    assert statuses == ["sent"] + ["failed"] * 5 + ["scheduled"] * 3  # the rest stay pending
    assert len(postmark.calls) == 6


def test_a_success_in_a_later_claim_resets_the_breaker_count(mike, postmark):
    """Sent one claim at a time (as approvals one by one kick dispatch), fail, ok, fail, ok…
    counted 1, 1, 2, 2, … and aborted the batch at the fifth failure, none of them after
    another: a success was only told to the batch when its run failed in the same claim."""
    _customers("xoxoxoxoxo")
    run = _launch(mike)
    _approve_all(run, mike)
    counts = []
    for _ in range(10):
        dispatch.dispatch_due(now=NOW, limit=1, clock=ManualClock(NOW))
        run.refresh_from_db()
        counts.append(run.consecutive_failures)
    assert counts == [1, 0] * 5
    assert run.status == "partial"
    assert len(postmark.calls) == 10


@pytest.mark.parametrize("pattern", ["xxxxo", "xxxxoxxxxo", "xxoxxxoxxo"])
def test_the_breaker_does_not_trip_on_four_or_non_consecutive_failures(mike, postmark, pattern):
    _customers(pattern)
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    run.refresh_from_db()
    assert run.status == "partial"
    assert not Delivery.objects.filter(status="scheduled").exists()


def test_resume_sends_only_the_rest_and_never_resends(mike, postmark):
    _customers("oxxxxxooo")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    client = Client(enforce_csrf_checks=True)
    client.force_login(mike)
    page = client.get(f"/admin/notifications/workflowrun/{run.id}/change/")
    token = page.cookies["csrftoken"].value
    response = client.post(
        f"/admin/batch/resume?run_id={run.id}",
        HTTP_X_CSRFTOKEN=token,
        HTTP_ACCEPT="application/json",
    )
    assert response.json() == {"run_id": run.id, "resumed": True, "status": "running"}
    _dispatch(NOW + timedelta(seconds=5))
    run.refresh_from_db()
    assert run.status == "partial"
    # how it ended, no longer "resumed by mike"
    assert run.status_reason == "ended partial: 4 sent, 5 failed, 0 skipped, 0 rejected of 9"
    sent_to = [json.loads(c.request.body)["To"] for c in postmark.calls]
    assert len(sent_to) == len(set(sent_to)) == 9  # every recipient once, none twice
    assert Delivery.objects.filter(status="sent").count() == 4


def test_the_resume_endpoint_enforces_csrf_and_permission(mike):
    run = WorkflowRun.objects.create(workflow=batch.batch_workflow(), status="aborted")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(mike)
    assert strict.post(f"/admin/batch/resume?run_id={run.id}").status_code == 403  # no CSRF token

    clerk = User.objects.create_user("clerk", password="pw", is_staff=True)
    client = Client()
    client.force_login(clerk)
    response = client.post(f"/admin/batch/resume?run_id={run.id}", HTTP_ACCEPT="application/json")
    assert response.status_code == 403
    run.refresh_from_db()
    assert run.status == "aborted"
    anonymous = Client().post(f"/admin/batch/resume?run_id={run.id}")
    assert anonymous.status_code == 302  # to the login page


def test_cancel_stops_the_pending_rest(mike, postmark):
    _customers("oxxxxxooo")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    assert batch.run_cancel(run=run, user=mike, now=NOW) == 3
    _dispatch(NOW + timedelta(minutes=1))
    assert len(postmark.calls) == 6
    run.refresh_from_db()
    assert run.status == "cancelled"


def test_the_kill_switch_mid_batch_halts_pending_sends_then_releases_them(mike, settings):
    settings.SENDER_DEFAULT_RATES = {"email": 1.0, "sms": 1.0, "whatsapp": 1.0}
    CustomerFactory.create_batch(5)
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()  # at 1/s with a 1 s horizon: two go, three wait for their slots
    assert Delivery.objects.filter(status="sent").count() == 2
    switch = KillSwitch.objects.create(name="high_risk_ops", scope="high_risk_ops", is_on=True)
    report = _dispatch(NOW + timedelta(seconds=10))
    assert (report.sent, report.frozen) == (0, 3)
    assert Delivery.objects.filter(status="sent").count() == 2  # already sent stay sent
    KillSwitch.objects.filter(id=switch.id).update(is_on=False)
    _dispatch(NOW + timedelta(seconds=20))
    _dispatch(NOW + timedelta(seconds=30))
    assert Delivery.objects.filter(status="sent").count() == 5


def test_post_actions_log_reflect_emit_and_stage_a_verify_check(mike):
    CustomerFactory.create_batch(2)
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    run.refresh_from_db()
    assert run.status == "completed"
    assert run.summary["sent"] == 2
    assert NOW <= run.completed_at < NOW + timedelta(seconds=1)
    reflexion = ReflexionEntry.objects.get(workflow_run=run)
    assert reflexion.tags == ["batch_notify", "completed"]
    assert "2 sent, 0 failed" in reflexion.narrative
    event = Event.objects.get(name="workflow.completed")
    assert event.idempotency_key == f"workflow_run:{run.id}:finished"
    check = VerifyCheck.objects.get(workflow_run=run)
    assert (check.name, check.status) == ("all_recipients_logged", "pending")
    assert check.due_at == run.completed_at + timedelta(seconds=60)


def test_the_verify_check_passes_after_its_window(mike):
    CustomerFactory.create_batch(2)
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    assert batch.run_verify_checks(now=NOW + timedelta(seconds=30)) == {
        "pass": 0,
        "fail": 0,
        "timeout": 0,
        "waiting": 0,
    }
    assert batch.run_verify_checks(now=NOW + timedelta(minutes=8))["pass"] == 1
    check = VerifyCheck.objects.get()
    assert (check.status, check.expected, check.observed) == ("pass", 2, 2)


def test_the_verify_check_fails_when_a_recipient_is_not_logged(mike):
    CustomerFactory.create_batch(2)
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    Delivery.objects.filter(workflow_run=run).first().delete()  # a lost log row
    batch.run_verify_checks(now=NOW + timedelta(minutes=8))
    check = VerifyCheck.objects.get()
    assert (check.status, check.expected, check.observed) == ("fail", 2, 1)


def test_a_cancelled_delivery_counts_as_logged(mike):
    """Cancelled on purpose (a person, the run's cancel) is an outcome with its reason, not
    a lost log row: the check passes."""
    CustomerFactory.create_batch(2)
    run = _launch(mike)
    _approve_all(run, mike)
    first = Delivery.objects.filter(workflow_run=run).order_by("id").first()
    assert operations.delivery_cancel(ids=[first.id], now=NOW, by="mike") == 1
    _dispatch()
    batch.run_verify_checks(now=NOW + timedelta(minutes=8))
    check = VerifyCheck.objects.get()
    assert (check.status, check.expected, check.observed) == ("pass", 2, 2)


def test_a_cancelled_delivery_is_said_cancelled_in_the_run_s_ending_not_skipped(mike):
    """A delivery cancelled by a person was counted "skipped" in the run's summary, its
    status reason and its reflexion ("1 skipped"), where nothing was skipped."""
    CustomerFactory.create_batch(3)
    run = _launch(mike)
    _approve_all(run, mike)
    first = Delivery.objects.filter(workflow_run=run).order_by("id").first()
    assert operations.delivery_cancel(ids=[first.id], now=NOW, by="mike") == 1
    _dispatch()
    run.refresh_from_db()
    assert run.status_reason == "ended partial: 2 sent, 0 failed, 1 cancelled, 0 rejected of 3"
    assert (run.summary["skipped"], run.summary["cancelled"], run.summary["not_sent"]) == (0, 1, 1)
    narrative = ReflexionEntry.objects.get(workflow_run=run).narrative
    assert narrative.endswith("ended partial: 2 sent, 0 failed, 1 cancelled, 0 rejected of 3.")


def test_attachments_go_with_every_message(mike, settings):
    settings.EMAIL_BACKEND = "anymail.backends.test.EmailBackend"
    from django.core import mail

    CustomerFactory.create_batch(2)
    run = _launch(
        mike,
        attachments=[
            SimpleUploadedFile("prices.pdf", b"%PDF-1.4 prices", content_type="application/pdf")
        ],
    )
    _approve_all(run, mike)
    _dispatch()
    assert len(mail.outbox) == 2
    for message in mail.outbox:
        assert [(a[0], a[1]) for a in message.attachments] == [("prices.pdf", b"%PDF-1.4 prices")]


def test_an_empty_cohort_is_refused(mike):
    CustomerFactory(bid="OTHER")
    with pytest.raises(batch.BatchBlocked) as caught:
        _launch(mike)
    assert "The filter selects no reachable customer." in caught.value.messages


def test_unicode_names_personalize_cleanly(mike):
    CustomerFactory(company_name="مدرسة النور 🌟", account_ref="NYC-ع")
    run = _launch(mike)
    _approve_all(run, mike)
    assert (
        DeliveryFactory._meta.model.objects.get().subject == "Holiday schedule for مدرسة النور 🌟"
    )


def test_the_template_a_launch_makes_is_its_record_and_not_offered_in_pickers(mike):
    from django.forms import modelform_factory

    from notifications.models import MessageTemplate
    from notifications.trigger_models import TriggerEvent, TriggerSetup

    CustomerFactory()
    run = _launch(mike)
    record = MessageTemplate.objects.get(id=run.inputs["template_id"])
    assert record.batch_run_id == run.id
    reusable = MessageTemplate.objects.create(
        name="Reusable", channel="email", subject="Hi", body="Hello"
    )
    for model, name in (
        (TriggerEvent, "template"),
        (TriggerEvent, "resolved_template"),
        (TriggerSetup, "grouped_template"),
    ):
        form = modelform_factory(model, fields=[name])()
        assert list(form.fields[name].queryset) == [reusable]


def test_the_same_batch_launched_twice_is_refused_while_the_first_is_unfinished(mike):
    CustomerFactory()
    first = _launch(mike)
    with pytest.raises(batch.BatchBlocked) as caught:
        _launch(mike)
    assert caught.value.messages == [
        f"The same batch (filter, subject and body) is already run {first.id}, awaiting "
        "approval (HITL gate): launching it again would send the same message twice. "
        "Approve or cancel that run, or change this one."
    ]
    assert WorkflowRun.objects.count() == 1
    # Another text is another batch; once the first has finished, the same one may go again.
    assert _launch(mike, subject="Another subject {{ customer_name }}").id != first.id
    batch.run_cancel(run=first, user=mike, now=NOW)
    assert _launch(mike).id > first.id


def test_a_subject_over_200_characters_is_refused_on_its_field(mike):
    CustomerFactory()
    with pytest.raises(ValidationError) as caught:
        _launch(mike, subject="x" * 201)
    assert caught.value.message_dict["subject"] == [
        "A subject is at most 200 characters; this one has 201."
    ]
    assert not WorkflowRun.objects.exists()


def _change_customer_email(user, customer, email):
    client = Client()
    client.force_login(user)
    fields = ("company_name", "phone", "account_ref", "bid", "region", "school_year", "tags")
    form = {name: getattr(customer, name) for name in fields}
    response = client.post(
        f"/admin/notifications/customer/{customer.id}/change/",
        {**form, "email": email},
        follow=True,
    )
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]]


def test_an_email_corrected_after_approval_is_where_the_retry_and_the_rest_go(mike, postmark):
    customers = _customers("oxxxxxooo")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()  # 1 sent, 5 failed: the breaker halts the run with 3 scheduled
    failed, waiting = customers[1], customers[7]
    assert Delivery.objects.get(recipient_key=f"customer:{failed.id}").status == "failed"
    notes = _change_customer_email(mike, failed, "fixed01@school.example.org")
    assert (
        f"1 batch email(s) to {failed} not yet sent now go to fixed01@school.example.org instead "
        "of bad01@school.example.org: scheduled ones when they are due, failed ones once retried "
        "(Deliveries → Retry selected failed deliveries)."
    ) in notes
    _change_customer_email(mike, waiting, "moved07@school.example.org")

    retried = Delivery.objects.get(recipient_key=f"customer:{failed.id}")
    assert retried.address == "fixed01@school.example.org"
    (event,) = retried.events.filter(kind="readdressed")
    assert event.reason == (
        "the customer's email was changed from bad01@school.example.org to "
        "fixed01@school.example.org by mike"
    )
    assert retried.status == "failed"  # until retried, with its error as it was
    assert "email was changed" not in retried.status_reason
    assert (
        "fixed01@school.example.org"
        in AuditEntry.objects.get(
            action="customer_email_change", target=f"customer:{failed.id}"
        ).detail["new"]
    )
    assert operations.delivery_retry(ids=[retried.id], now=NOW, by="mike") == 1
    assert batch.run_resume(run=run, user=mike, now=NOW)
    _dispatch(NOW + timedelta(seconds=5))

    messages = [json.loads(c.request.body) for c in postmark.calls]
    sent_to = [m["To"] for m in messages]
    assert (
        sent_to.count("fixed01@school.example.org")
        == sent_to.count("moved07@school.example.org")
        == 1
    )
    assert sent_to.count("bad01@school.example.org") == 1  # its first, failed try only
    assert "ok07@school.example.org" not in sent_to  # the moved customer's old address
    fixed = messages[sent_to.index("fixed01@school.example.org")]
    link = {h["Name"]: h["Value"] for h in fixed["Headers"]}["List-Unsubscribe"][1:-1]
    assert read_token(link.rsplit("/", 1)[1]) == ("fixed01@school.example.org", "email")
    assert link in fixed["HtmlBody"]  # the footer's link, signed for the new address too
    assert Delivery.objects.get(id=retried.id).status == "sent"


def test_removing_a_customers_email_cancels_what_was_scheduled_for_them(mike, postmark):
    customers = _customers("oxxxxxooo")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    failed, waiting = customers[1], customers[7]
    notes = _change_customer_email(mike, waiting, "")
    assert (
        f"1 scheduled batch delivery(ies) to ok07@school.example.org were cancelled: {waiting} "
        "has no email now."
    ) in notes
    notes = _change_customer_email(mike, failed, "")
    assert (
        f"1 failed batch email(s) to bad01@school.example.org stay failed: {failed} has no email "
        "to retry them to."
    ) in notes
    assert Delivery.objects.get(recipient_key=f"customer:{waiting.id}").status == "cancelled"
    assert Delivery.objects.get(recipient_key=f"customer:{failed.id}").status == "failed"
    assert (
        batch.customer_email_changed(
            customer_id=waiting.id, old="x@example.org", new="x@example.org", by="m", now=NOW
        )
        == batch.Readdressed()
    )


def test_marking_a_customer_inactive_cancels_their_scheduled_batch_emails(mike, postmark):
    customers = _customers("oxxxxxooo")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()  # 1 sent, 5 failed: the breaker halts the run with 3 scheduled
    waiting, sent = customers[7], customers[0]
    client = Client()
    client.force_login(mike)
    fields = ("company_name", "email", "phone", "account_ref", "bid", "region", "school_year")
    for customer in (waiting, sent):
        form = {name: getattr(customer, name) for name in fields}
        response = client.post(
            f"/admin/notifications/customer/{customer.id}/change/",
            {**form, "tags": customer.tags, "is_inactive": "on"},
            follow=True,
        )
        notes = [str(m) for m in response.context["messages"]]
        if customer is waiting:
            assert (
                f"1 scheduled batch delivery(ies) to {waiting} were cancelled: the customer is "
                "marked inactive."
            ) in notes
        else:
            assert not any("cancelled" in note for note in notes)

    cancelled = Delivery.objects.get(recipient_key=f"customer:{waiting.id}")
    assert (cancelled.status, cancelled.status_reason) == (
        "cancelled",
        "the customer was marked inactive by mike",
    )
    assert cancelled.events.get(kind="cancelled").reason == cancelled.status_reason
    assert Delivery.objects.get(recipient_key=f"customer:{sent.id}").status == "sent"
    assert Delivery.objects.filter(workflow_run=run, status="scheduled").count() == 2
    entry = AuditEntry.objects.get(action="customer_deactivated")
    assert (entry.by, entry.detail) == ("mike", {"deliveries": [cancelled.id]})


def test_a_rejected_gate_ends_its_run_as_a_cancel_does(mike):
    """Rejecting the gate left the run cancelled with no audit entry, reflexion, event or
    verify check, where cancelling a run at its gate wrote them all (seed 001: the post
    actions run for every ending)."""
    _customers("oo")
    run = _launch(mike)
    envelope = run.proposed_actions.get(action_type="workflow_batch_notify")

    assert batch.envelope_reject(envelope=envelope, user=mike, now=NOW)

    run.refresh_from_db()
    assert (run.status, run.status_reason, run.completed_at) == (
        "cancelled",
        "rejected at the HITL gate",
        NOW,
    )
    assert AuditEntry.objects.get(action="batch_gate_reject").target == f"run_{run.id}"
    (entry,) = ReflexionEntry.objects.filter(workflow_run=run)
    assert entry.tags == ["batch_notify", "cancelled"]
    assert Event.objects.get(name="workflow.cancelled").payload["workflow_run_id"] == run.id
    assert run.verify_checks.get().name == "all_recipients_logged"
    assert not batch.envelope_reject(envelope=envelope, user=mike, now=NOW)  # once
    assert ReflexionEntry.objects.filter(workflow_run=run).count() == 1


def test_an_unknown_delivery_reconciled_as_sent_ends_its_batch_again(mike, postmark):
    """A walkthrough's run ended "partial: 1 sent, 1 failed" with a delivery whose worker
    stopped while sending (unknown); marked sent, the run still said 1 failed while its
    progress bar said 2 sent."""
    import uuid

    _customers("oo")
    run = _launch(mike)
    _approve_all(run, mike)
    stuck = Delivery.objects.filter(workflow_run=run).order_by("id").first()
    Delivery.objects.filter(id=stuck.id).update(
        status="sending", claim_token=uuid.uuid4(), claimed_at=NOW - timedelta(hours=1)
    )
    _dispatch()
    stuck.refresh_from_db()
    run.refresh_from_db()
    assert stuck.status == "unknown"
    assert run.status_reason == "ended partial: 1 sent, 1 failed, 0 skipped, 0 rejected of 2"

    later = NOW + timedelta(minutes=5)
    assert operations.delivery_reconcile(ids=[stuck.id], accepted=True, now=later, by="mike") == 1

    run.refresh_from_db()
    assert run.status == "completed"
    assert run.status_reason == "ended completed: 2 sent, 0 failed, 0 skipped, 0 rejected of 2"
    assert (run.summary["sent"], run.summary["failed"], run.completed_at) == (2, 0, later)
    endings = Event.objects.filter(name__startswith="workflow.").order_by("id")
    assert [e.name for e in endings] == ["workflow.partial", "workflow.completed"]
    assert ReflexionEntry.objects.filter(workflow_run=run).count() == 2


def test_a_retried_delivery_reopens_its_ended_batch_which_ends_again_with_its_outcome(
    mike, postmark
):
    customers = _customers("ox")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    run.refresh_from_db()
    assert run.status_reason == "ended partial: 1 sent, 1 failed, 0 skipped, 0 rejected of 2"
    batch.customer_email_changed(
        customer_id=customers[1].id,
        old=customers[1].email,
        new="fixed@school.example.org",
        by="mike",
        now=NOW,
    )
    failed = Delivery.objects.get(status="failed")
    assert operations.delivery_retry(ids=[failed.id], now=NOW, by="mike") == 1
    run.refresh_from_db()
    assert (run.status, run.status_reason) == (
        "running",
        "reopened: failed deliveries retried by mike",
    )
    client = Client()
    client.force_login(mike)
    page = client.get(f"/admin/notifications/workflowrun/{run.id}/change/").content.decode()
    assert "As it was when the run last ended; it was reopened since (now: Sending)" in page
    _dispatch(NOW + timedelta(seconds=5))
    run.refresh_from_db()
    assert run.status == "completed"
    assert run.status_reason == "ended completed: 2 sent, 0 failed, 0 skipped, 0 rejected of 2"
    assert (run.summary["sent"], run.summary["failed"]) == (2, 0)
    page = client.get(f"/admin/notifications/workflowrun/{run.id}/change/").content.decode()
    assert "As it was when the run last ended" not in page
    assert "&quot;sent&quot;: 2" in page or '"sent": 2' in page
    endings = Event.objects.filter(name__startswith="workflow.").order_by("id")
    assert [e.name for e in endings] == ["workflow.partial", "workflow.completed"]
    first, last = ReflexionEntry.objects.filter(workflow_run=run).order_by("id")
    assert first.tags == ["batch_notify", "partial"]  # a record: kept as it was written
    assert "ended partial: 1 sent, 1 failed" in first.narrative
    assert last.tags == ["batch_notify", "completed"]
    assert "ended completed: 2 sent, 0 failed" in last.narrative
    check = VerifyCheck.objects.get(workflow_run=run)
    assert (check.status, check.due_at) == ("pending", run.completed_at + timedelta(seconds=60))


def test_a_cancelled_batch_s_failed_deliveries_are_not_retried(mike, postmark):
    _customers("oxxxxxooo")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()  # the breaker aborts the run: 5 failed, 3 scheduled
    failed = list(Delivery.objects.filter(status="failed").values_list("id", flat=True))
    client = Client()
    client.force_login(mike)
    changelist = "/admin/notifications/delivery/"
    page = client.post(changelist, {"action": "retry_failed", "_selected_action": failed})
    assert (
        "5 belong to a batch its breaker aborted: they wait until the batch is resumed."
        in page.content.decode()
    )
    batch.run_cancel(run=run, user=mike, now=NOW)
    page = client.post(changelist, {"action": "retry_failed", "_selected_action": failed})
    assert "Retry 0 failed deliveries" in page.content.decode()
    assert "5 of a cancelled batch are left alone too: a cancelled batch sends nothing more." in (
        page.content.decode()
    )
    done = client.post(
        changelist,
        {"action": "retry_failed", "_selected_action": failed, "post": "yes"},
        follow=True,
    )
    assert [str(m) for m in done.context["messages"]] == [
        "0 failed deliveries scheduled again.",
        "5 of a cancelled batch were left alone: a cancelled batch sends nothing more.",
    ]
    assert operations.delivery_retry(ids=failed, now=NOW, by="mike") == 0
    assert Delivery.objects.filter(id__in=failed, status="failed").count() == 5


def test_the_retry_confirmation_says_a_re_addressed_delivery_s_error_was_at_the_old_address(
    mike, postmark
):
    """A failed delivery re-addressed since (the customer's email corrected) was listed with
    its old error next to its new address: "Email to fixed@…: Invalid 'To' address: 'bad01…'"."""
    customers = _customers("oxx")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    batch.customer_email_changed(
        customer_id=customers[1].id,
        old=customers[1].email,
        new="fixed@school.example.org",
        by="mike",
        now=NOW,
    )
    failed = list(Delivery.objects.filter(status="failed").order_by("id"))
    client = Client()
    client.force_login(mike)
    page = client.post(
        "/admin/notifications/delivery/",
        {"action": "retry_failed", "_selected_action": [d.id for d in failed]},
    ).content.decode()
    moved = (
        "Email to fixed@school.example.org (re-addressed since it failed: the customer&#x27;s "
        "email was changed from bad01@school.example.org to fixed@school.example.org by mike); "
        "its error, at the old address: "
    )
    assert moved in page
    assert "Email to bad02@school.example.org: " in page  # not re-addressed: as it was
    assert page.count("re-addressed since it failed") == 1


def _retry_in_the_admin(user, ids) -> list[str]:
    """Deliveries → "Retry selected failed deliveries", confirmed; the messages shown."""
    client = Client()
    client.force_login(user)
    done = client.post(
        "/admin/notifications/delivery/",
        {"action": "retry_failed", "_selected_action": ids, "post": "yes"},
        follow=True,
    )
    return [str(m) for m in done.context["messages"]]


@time_machine.travel(NOW, tick=False)  # the admin's retry is due at the clock's "now"
def test_an_email_corrected_while_its_delivery_was_in_flight_is_used_by_the_retry(mike, postmark):
    customers = _customers("ox")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    lost = Delivery.objects.get(status="failed")
    Delivery.objects.filter(id=lost.id).update(status="unknown")  # a worker died sending it
    notes = _change_customer_email(mike, customers[1], "fixed@school.example.org")
    assert (
        "1 delivery(ies) to bad01@school.example.org were already being sent (or their outcome "
        "is unknown) and keep that address; should one fail, a retry sends it to "
        "fixed@school.example.org." in notes
    )
    assert operations.delivery_reconcile(ids=[lost.id], accepted=False, now=NOW, by="mike") == 1
    assert _retry_in_the_admin(mike, [lost.id]) == [
        "1 failed deliveries scheduled again.",
        "1 went to a customer whose email was corrected while they were being sent: they go to "
        "the customer's email as it is now.",
    ]
    _dispatch(NOW + timedelta(seconds=5))
    sent_to = [json.loads(c.request.body)["To"] for c in postmark.calls]
    assert sent_to[-1] == "fixed@school.example.org"
    assert Delivery.objects.get(id=lost.id).status == "sent"


# Postmark's answer to a send it cannot take now: a temporary error, retried.
TRY_AGAIN_LATER = 503, {}, json.dumps({"ErrorCode": 100, "Message": "Try again later."})


def _one_approved_through_postmark(user, settings):
    """One customer's batch email approved and due, to go by Postmark (answers faked by
    the test); the customer."""
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "x"}
    (customer,) = _customers("o")
    _approve_all(_launch(user), user)
    return customer


def test_an_email_corrected_while_its_delivery_was_sent_is_used_by_the_automatic_retry(
    mike, settings
):
    customer = _one_approved_through_postmark(mike, settings)
    notes = []

    def answer(request):
        to = json.loads(request.body)["To"]
        if not notes:  # the first try: corrected in the admin meanwhile, then a 503
            notes.extend(_change_customer_email(mike, customer, "fixed@school.example.org"))
            return TRY_AGAIN_LATER
        return 200, {}, json.dumps({"To": to, "MessageID": "pm-1", "ErrorCode": 0, "Message": ""})

    with responses.RequestsMock() as mock:
        mock.add_callback(responses.POST, POSTMARK_URL, callback=answer)
        _dispatch()
        delivery = Delivery.objects.get()
        assert delivery.status == "scheduled"  # its retry
        assert delivery.address == "fixed@school.example.org"
        (event,) = delivery.events.filter(kind="readdressed")
        assert event.reason == (
            "the customer's email was corrected from ok00@school.example.org to "
            "fixed@school.example.org while this was being sent; re-addressed for its automatic "
            "retry"
        )
        _dispatch(delivery.send_at)
        sent_to = [json.loads(c.request.body)["To"] for c in mock.calls]
    assert any("already being sent" in note for note in notes)
    assert sent_to == ["ok00@school.example.org", "fixed@school.example.org"]
    assert Delivery.objects.get().status == "sent"


def test_an_email_removed_while_its_delivery_was_sent_is_not_retried_to_the_old_address(
    mike, settings
):
    customer = _one_approved_through_postmark(mike, settings)

    def answer(request):  # removed in the admin meanwhile, then a 503
        _change_customer_email(mike, customer, "")
        return TRY_AGAIN_LATER

    with responses.RequestsMock() as mock:
        mock.add_callback(responses.POST, POSTMARK_URL, callback=answer)
        _dispatch()
        delivery = Delivery.objects.get()
        _dispatch(NOW + timedelta(hours=1))
        assert len(mock.calls) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.address) == ("cancelled", "ok00@school.example.org")
    assert delivery.status_reason == (
        "the customer's email was removed while this was being sent; not sent by its "
        "automatic retry"
    )


def test_a_person_s_retry_leaves_failed_what_has_no_email_now(mike, postmark):
    customers = _customers("ox")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    lost = Delivery.objects.get(status="failed")
    Delivery.objects.filter(id=lost.id).update(status="unknown")  # a worker died sending it
    _change_customer_email(mike, customers[1], "")
    assert operations.delivery_reconcile(ids=[lost.id], accepted=False, now=NOW, by="mike") == 1
    assert _retry_in_the_admin(mike, [lost.id]) == [
        "0 failed deliveries scheduled again.",
        "1 stay failed: their customer's email was removed while they were being sent, so "
        "there is nowhere to send them.",
    ]
    _dispatch(NOW + timedelta(seconds=5))
    assert Delivery.objects.get(id=lost.id).status == "failed"
    assert len(postmark.calls) == 2  # the first round's two sends only


def test_a_customer_marked_inactive_while_their_email_was_sent_is_not_retried(mike, settings):
    from notifications.models import Customer

    customer = _one_approved_through_postmark(mike, settings)

    def answer(request):  # marked inactive meanwhile (the admin's cancel finds it sending)
        Customer.objects.filter(id=customer.id).update(is_inactive=True)
        assert batch.customer_deactivated(customer_id=customer.id, by="mike", now=NOW) == 0
        return TRY_AGAIN_LATER

    with responses.RequestsMock() as mock:
        mock.add_callback(responses.POST, POSTMARK_URL, callback=answer)
        _dispatch()
        _dispatch(NOW + timedelta(hours=1))
        assert len(mock.calls) == 1
    delivery = Delivery.objects.get()
    assert (delivery.status, delivery.status_reason) == (
        "cancelled",
        "the customer was marked inactive while this was being sent; not sent by its "
        "automatic retry",
    )


def test_a_person_s_retry_leaves_failed_what_an_inactive_customer_would_get(mike, postmark):
    from notifications.models import Customer

    customers = _customers("ox")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    failed = Delivery.objects.get(status="failed")
    Customer.objects.filter(id=customers[1].id).update(is_inactive=True)
    assert _retry_in_the_admin(mike, [failed.id]) == [
        "0 failed deliveries scheduled again.",
        "1 stay failed: their customer is marked inactive (reactivate them in Customers to send).",
    ]
    assert Delivery.objects.get(id=failed.id).status == "failed"


def test_a_cancelled_batch_s_failed_email_is_counted_once_whatever_its_customer(mike, postmark):
    from notifications.models import Customer

    customers = _customers("oxxxxxooo")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()  # the breaker aborts the run: 5 failed, 3 scheduled
    failed = Delivery.objects.get(recipient_key=f"customer:{customers[1].id}")
    assert batch.run_cancel(run=run, user=mike, now=NOW)
    Customer.objects.filter(id=customers[1].id).update(is_inactive=True)

    assert _retry_in_the_admin(mike, [failed.id]) == [
        "0 failed deliveries scheduled again.",
        "1 of a cancelled batch were left alone: a cancelled batch sends nothing more.",
    ]


def test_a_person_s_retry_leaves_failed_what_goes_to_a_suppressed_address(mike):
    """It was scheduled, skipped at once as suppressed, and its ended run reopened and
    ended again for nothing (a second reflexion and event)."""
    from notifications.models import RecordedMessage

    _customers("o")
    rejected = CustomerFactory(email="gone+reject@school.example.org")
    run = _launch(mike)
    _approve_all(run, mike)
    _dispatch()
    run.refresh_from_db()
    ended = run.status_reason
    failed = Delivery.objects.get(recipient_key=f"customer:{rejected.id}")
    assert failed.status == "failed"  # refused as no such mailbox: suppressed

    assert _retry_in_the_admin(mike, [failed.id]) == [
        "0 failed deliveries scheduled again.",
        "1 stay failed: their address is suppressed now (a bounce, an unsubscribe or a "
        "complaint; lift it in Suppressions to send).",
    ]
    failed.refresh_from_db()
    run.refresh_from_db()
    assert (failed.status, run.status_reason) == ("failed", ended)
    assert ReflexionEntry.objects.filter(workflow_run=run).count() == 1
    assert RecordedMessage.objects.count() == 1


def test_an_email_removed_before_its_review_is_approved_fails_and_is_not_counted_sent(mike):
    from notifications.models import RecordedMessage

    gone, kept = _customers("oo")
    run = _launch(mike)
    _change_customer_email(mike, gone, "")
    _approve_all(run, mike)
    report = _dispatch()
    assert (report.sent, report.failed) == (1, 1)
    failed = Delivery.objects.get(recipient_key=f"customer:{gone.id}")
    assert (failed.status, failed.provider_message_id) == ("failed", "")
    assert failed.last_error == "no recipient address (''): nothing was handed to the provider"
    assert list(RecordedMessage.objects.values_list("to", flat=True)) == [kept.email]
    run.refresh_from_db()
    assert run.status_reason == "ended partial: 1 sent, 1 failed, 0 skipped, 0 rejected of 2"


def test_a_customer_who_unsubscribed_is_not_written_to_at_a_corrected_address(mike, postmark):
    from notifications import tracking

    gone, bounced = _customers("oo")
    run = _launch(mike)
    _approve_all(run, mike)  # staged, not sent yet
    for customer, reason in ((gone, "unsubscribe"), (bounced, "bounce")):
        tracking.suppress(
            address=customer.email, channel="email", reason=reason, source="", by="t", now=NOW
        )
    notes = _change_customer_email(mike, gone, "new00@school.example.org")
    assert (
        f"1 batch email(s) to {gone} stay addressed to ok00@school.example.org: that address "
        "unsubscribed (or complained), so what they opted out of is not moved to "
        "new00@school.example.org; they are skipped at send." in notes
    )
    _change_customer_email(mike, bounced, "new01@school.example.org")
    _dispatch()
    sent_to = [json.loads(c.request.body)["To"] for c in postmark.calls]
    assert sent_to == ["new01@school.example.org"]  # a bounce is what the correction is for
    kept = Delivery.objects.get(recipient_key=f"customer:{gone.id}")
    assert (kept.address, kept.status) == ("ok00@school.example.org", "skipped")
