"""What the walkthrough of the batch flow (seeds 000/001) found in the admin: permission
before confirmation, the address a reviewer approves, the resume endpoint's answers, and
resuming behind an open provider breaker."""

import html
import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from notifications import batch, tracking
from notifications.models import (
    Customer,
    Delivery,
    ProviderBreaker,
    WorkflowRun,
)
from tests.notifications.factories import CustomerFactory, DeliveryFactory

pytestmark = pytest.mark.django_db
NOW = datetime(2025, 12, 1, 9, 0, tzinfo=UTC)
CHANGELIST = "admin:notifications_proposedaction_changelist"
RUNS = "admin:notifications_workflowrun_changelist"


@pytest.fixture(autouse=True)
def recording_email(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"


def _staff(*codenames) -> Client:
    """Staff who see every batch screen but hold only the given specific permissions."""
    user = User.objects.create_user("clerk", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            codename__in=[
                "view_workflowrun",
                "change_workflowrun",
                "view_proposedaction",
                "change_proposedaction",
                *codenames,
            ]
        )
    )
    client = Client()
    client.force_login(user)
    return client


def _reviews(mike, customers, bid="B5875") -> WorkflowRun:
    run = batch.batch_launch(
        user=mike,
        cohort_filter=f"bid={bid}",
        subject="Holiday schedule for {{ customer_name }}",
        body_template="Dear {{ customer_name }}, we close on 24 December.",
        now=NOW,
    )
    batch.envelope_approve(envelope=run.proposed_actions.get(), user=mike, now=NOW)
    assert run.proposed_actions.filter(action_type="hitl_review").count() == len(customers)
    return run


def _aborted_run(mike, unsent=2) -> WorkflowRun:
    run = WorkflowRun.objects.create(
        workflow=batch.batch_workflow(),
        status="aborted",
        status_reason="circuit breaker: 5 consecutive failed sends",
    )
    DeliveryFactory.create_batch(unsent, workflow_run=run)
    DeliveryFactory(workflow_run=run, status="sent")
    return run


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def _text(response) -> str:
    """The page as read: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", response.content.decode()))


# 1. Permission before confirmation


def test_deciding_without_the_permission_is_refused_at_once_without_a_confirmation(mike):
    CustomerFactory.create_batch(2)
    run = _reviews(mike, [1, 2])
    reviews = list(run.proposed_actions.filter(action_type="hitl_review").values_list("id"))
    ids = [i for (i,) in reviews]
    client = _staff("resume_batch", "launch_batch")
    for action, verb in (("approve_selected", "Approve"), ("reject_selected", "Reject")):
        response = client.post(
            reverse(CHANGELIST), {"action": action, "_selected_action": ids}, follow=True
        )
        page = response.content.decode()
        assert f"{verb} 2 proposed action(s)" not in page
        assert "confirm-action" not in page
        assert _messages(response) == ["You may not approve or reject proposed actions."]
    assert run.proposed_actions.filter(status="pending").count() == 2
    assert not Delivery.objects.exists()


def test_run_actions_without_the_permission_are_refused_at_once_without_a_confirmation(mike):
    run = _aborted_run(mike)
    client = _staff("decide_proposedaction", "launch_batch")
    for action in ("resume_runs", "cancel_runs"):
        response = client.post(
            reverse(RUNS), {"action": action, "_selected_action": [run.id]}, follow=True
        )
        assert "confirm-action" not in response.content.decode()
        assert _messages(response) == ["You may not resume or cancel batch notifications."]
    # The run page's own cancel door: refused before anything, confirmed or not.
    assert client.get(reverse("admin:batch_cancel", args=[run.id])).status_code == 403
    response = client.post(reverse("admin:batch_cancel", args=[run.id]), {"post": "yes"})
    assert response.status_code == 403
    assert client.get(reverse("admin:batch_resume_confirm", args=[run.id])).status_code == 403
    run.refresh_from_db()
    assert run.status == "aborted"
    assert Delivery.objects.filter(status="scheduled").count() == 2


def test_with_the_permission_the_decision_still_asks_for_confirmation_first(mike):
    CustomerFactory.create_batch(1)
    run = _reviews(mike, [1])
    (review,) = run.proposed_actions.filter(action_type="hitl_review")
    client = _staff("decide_proposedaction")
    page = client.post(
        reverse(CHANGELIST), {"action": "approve_selected", "_selected_action": [review.id]}
    ).content.decode()
    assert "Approve 1 proposed action(s)" in page
    review.refresh_from_db()
    assert review.status == "pending"


# 2. The address a reviewer approves


def test_the_review_list_shows_each_recipients_current_email_and_flags_unreachable_ones(
    mike, admin_client
):
    good = CustomerFactory(company_name="Good School", email="office@good.example.org")
    gone = CustomerFactory(company_name="Gone School", email="office@gone.example.org")
    broken = CustomerFactory(company_name="Broken School", email="office@broken.example.org")
    moved = CustomerFactory(company_name="Moved School", email="old@moved.example.org")
    run = _reviews(mike, [good, gone, broken, moved])
    tracking.suppress(
        address="Office@Gone.example.org",
        channel="email",
        reason="unsubscribe",
        source="footer link",
        by="test",
        now=NOW,
    )
    Customer.objects.filter(id=broken.id).update(email="office,broken.example.org")  # an import
    Customer.objects.filter(id=moved.id).update(email="new@moved.example.org")
    page = _text(
        admin_client.get(
            reverse(CHANGELIST),
            {"workflow_run__id__exact": run.id, "action_type__exact": "hitl_review"},
        )
    )
    assert "Sends to (current email)" in page
    assert "office@good.example.org" in page
    assert "new@moved.example.org" in page and "old@moved.example.org" not in page
    assert "office@gone.example.org ⚠ suppressed (Unsubscribed): skipped, not sent" in page
    assert (
        "office,broken.example.org ⚠ not an email address: the send fails; correct it in "
        "Customers" in page
    )
    assert page.count("⚠") == 2


def test_the_review_list_reads_addresses_and_suppressions_without_a_query_per_row(
    mike, admin_client
):
    runs = {}
    for count in (2, 8):
        bid = f"B{count:04d}"
        customers = CustomerFactory.create_batch(count, bid=bid)
        runs[count] = _reviews(mike, customers, bid=bid)
        tracking.suppress(  # one flagged row each, so the suppression lookup finds something
            address=customers[0].email,
            channel="email",
            reason="bounce",
            source="postmark",
            by="test",
            now=NOW,
        )

    def queries(count: int) -> int:
        params = {"workflow_run__id__exact": runs[count].id, "action_type__exact": "hitl_review"}
        admin_client.get(reverse(CHANGELIST), params)  # warm caches (content types)
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(reverse(CHANGELIST), params)
        assert response.context["cl"].result_count == count
        assert _text(response).count("⚠ suppressed (Hard bounce)") == 1
        return len(captured)

    assert queries(2) == queries(8)


def test_the_review_page_shows_the_email_and_flags_it(mike, admin_client):
    customer = CustomerFactory(company_name="Gone School", email="office@gone.example.org")
    run = _reviews(mike, [customer])
    (review,) = run.proposed_actions.filter(action_type="hitl_review")
    url = reverse("admin:notifications_proposedaction_change", args=[review.id])
    page = _text(admin_client.get(url))
    assert "Sends to (current email)" in page
    assert "office@gone.example.org" in page and "⚠" not in page
    tracking.suppress(
        address=customer.email,
        channel="email",
        reason="bounce",
        source="postmark",
        by="test",
        now=NOW,
    )
    page = _text(admin_client.get(url))
    assert "office@gone.example.org ⚠ suppressed (Hard bounce): skipped, not sent" in page
    Customer.objects.filter(id=customer.id).update(email="")
    page = _text(admin_client.get(url))
    assert "⚠ no email address: nothing can be sent; add one in Customers" in page
    envelope = run.proposed_actions.get(action_type="workflow_batch_notify")
    gate = admin_client.get(
        reverse("admin:notifications_proposedaction_change", args=[envelope.id])
    )
    assert gate.status_code == 200


# 3. The resume endpoint's answers


def test_the_resume_endpoint_names_the_status_in_words(mike, admin_client):
    run = WorkflowRun.objects.create(workflow=batch.batch_workflow(), status="awaiting_approval")
    response = admin_client.post(f"{reverse('batch_resume')}?run_id={run.id}", follow=True)
    assert _messages(response) == [
        f"Run {run.id} is awaiting approval (HITL gate): nothing to resume."
    ]


def test_a_repeated_run_id_is_refused_and_changes_nothing(mike, admin_client):
    first, second = _aborted_run(mike), _aborted_run(mike)
    url = reverse("batch_resume")
    for query, body in (
        (f"?run_id={second.id}&run_id={first.id}", {}),
        (f"?run_id={second.id}", {"run_id": str(first.id)}),
        (f"?run_id={second.id}", {"run_id": str(second.id)}),
    ):
        response = admin_client.post(f"{url}{query}", body)
        assert response.status_code == 400
        assert response.json() == {"error": "run_id is given 2 times: give exactly one run number"}
    assert set(WorkflowRun.objects.values_list("status", flat=True)) == {"aborted"}
    assert admin_client.post(f"{url}?run_id={second.id}").status_code == 302
    second.refresh_from_db()
    assert second.status == "running"


def test_the_resume_endpoint_keeps_its_json_answer(mike, admin_client):
    run = _aborted_run(mike)
    response = admin_client.post(
        f"{reverse('batch_resume')}?run_id={run.id}", HTTP_ACCEPT="application/json"
    )
    assert response.json() == {"run_id": run.id, "resumed": True, "status": "running"}
    again = admin_client.post(
        f"{reverse('batch_resume')}?run_id={run.id}", HTTP_ACCEPT="application/json"
    )
    assert again.status_code == 409


# 4. Resuming behind an open provider breaker


def _open_breaker(opened_at: datetime, state: str = "open") -> ProviderBreaker:
    return ProviderBreaker.objects.create(
        provider="email:recording", state=state, opened_at=opened_at, cooloff_seconds=300
    )


@time_machine.travel(NOW, tick=False)
def test_resuming_behind_an_open_provider_breaker_says_until_when(mike, admin_client):
    run = _aborted_run(mike)
    _open_breaker(NOW - timedelta(minutes=1))
    held = (
        "But the provider breaker email:recording is open until 2025-12-01 09:04:00 UTC (then "
        "one trial call is made; the rest follow once it succeeds): the unsent deliveries go "
        "when it lets them, not at once."
    )
    page = html.unescape(
        admin_client.get(reverse("admin:batch_resume_confirm", args=[run.id])).content.decode()
    )
    assert held in page
    assert "unsent deliveries (will go once the provider breaker lets them)" in page
    assert "(will go)<" not in page
    assert "Yes, resume (2 deliveries wait for the provider breaker)" in page

    response = admin_client.post(
        f"{reverse('batch_resume')}?run_id={run.id}", {"post": "yes"}, follow=True
    )
    assert _messages(response) == [f"Run {run.id} resumed. {held}"]
    assert "go out now" not in response.content.decode()
    run.refresh_from_db()
    assert run.status == "running"


@time_machine.travel(NOW, tick=False)
def test_resuming_selected_runs_behind_a_breaker_says_so_on_the_page_and_after(mike, admin_client):
    run = _aborted_run(mike)
    _open_breaker(NOW - timedelta(minutes=1), state="half_open")
    held = (
        "But the provider breaker email:recording is half-open (one trial call is under way; "
        "the rest follow once it succeeds): the unsent deliveries go when it lets them, not "
        "at once."
    )
    selected = {"action": "resume_runs", "_selected_action": [run.id]}
    page = html.unescape(admin_client.post(reverse(RUNS), selected).content.decode())
    assert held in page
    done = admin_client.post(reverse(RUNS), {**selected, "post": "yes"}, follow=True)
    assert _messages(done) == [f"1 run(s) resumed. {held}"]


@time_machine.travel(NOW, tick=False)
def test_a_breaker_whose_cool_off_is_over_is_said_to_try_at_the_next_round(mike, admin_client):
    run = _aborted_run(mike)
    _open_breaker(NOW - timedelta(minutes=10))
    page = html.unescape(
        admin_client.get(reverse("admin:batch_resume_confirm", args=[run.id])).content.decode()
    )
    assert (
        "But the provider breaker email:recording is open; its cool-off ended at 2025-12-01 "
        "08:55:00 UTC (the next dispatch round makes one trial call" in page
    )


@time_machine.travel(NOW, tick=False)
def test_a_closed_breaker_or_another_providers_breaker_changes_nothing_said(mike, admin_client):
    run = _aborted_run(mike)
    ProviderBreaker.objects.create(provider="email:recording", state="closed")
    ProviderBreaker.objects.create(provider="sms:recording", state="open", opened_at=NOW)
    page = admin_client.get(reverse("admin:batch_resume_confirm", args=[run.id])).content.decode()
    assert "provider breaker" not in page
    assert "Yes, resume and send 2 deliveries" in page
    response = admin_client.post(f"{reverse('batch_resume')}?run_id={run.id}", follow=True)
    assert _messages(response) == [f"Run {run.id} resumed: its unsent deliveries go out now."]


@time_machine.travel(NOW, tick=False)
def test_a_running_batchs_page_names_the_provider_breaker_holding_it(mike, admin_client):
    """The run page said "Circuit breaker: closed (0 of 5…)" while the provider breaker held
    every one of its deliveries; only the delivery list said why nothing went."""
    run = WorkflowRun.objects.create(workflow=batch.batch_workflow(), status="running")
    DeliveryFactory(workflow_run=run)
    page = _text(admin_client.get(reverse("admin:notifications_workflowrun_change", args=[run.id])))
    assert "closed (0 of 5 failures in a row)" in page
    assert "provider breaker" not in page
    _open_breaker(NOW - timedelta(minutes=1))
    page = _text(admin_client.get(reverse("admin:notifications_workflowrun_change", args=[run.id])))
    assert (
        "closed (0 of 5 failures in a row); the provider breaker email:recording is open until "
        "2025-12-01 09:04:00 UTC"
    ) in page


@time_machine.travel(NOW, tick=False)
def test_a_batch_cancelled_after_its_breaker_tripped_is_not_said_to_have_a_closed_breaker(
    mike, admin_client
):
    """Its page said "Circuit breaker: closed (5 of 5 failures in a row)"."""
    run = _aborted_run(mike)
    run.consecutive_failures = 5
    run.save(update_fields=["consecutive_failures"])
    admin_client.post(reverse("admin:batch_cancel", args=[run.id]), {"post": "yes"})

    page = _text(admin_client.get(reverse("admin:notifications_workflowrun_change", args=[run.id])))

    assert "closed (5 of 5" not in page
    assert "tripped (5 failures in a row); the run was then cancelled" in page
