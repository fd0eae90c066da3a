"""The batch journey through the admin's doors (the browser journey is in tests/browser)."""

import html
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from notifications import tracking
from notifications.dispatch import ManualClock, dispatch_due
from notifications.models import (
    Customer,
    Delivery,
    KillSwitch,
    ProposedAction,
    Workflow,
    WorkflowRun,
)
from tests.notifications.factories import CustomerFactory, DeliveryFactory

pytestmark = pytest.mark.django_db
FORM = {
    "customer_cohort_filter": "bid=B5875",
    "subject": "Holiday schedule for {{ customer_name }}",
    "body_template": "Dear {{ customer_name }},\nwe close on 24 December.",
}


@pytest.fixture(autouse=True)
def recording_email(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"


def test_preview_shows_count_sample_and_suppressed(admin_client):
    CustomerFactory(company_name="Brooklyn Tech")
    CustomerFactory(company_name="Gone School", email="gone@school.example.org")
    from notifications.models import Suppression

    Suppression.objects.create(address="gone@school.example.org", channel="email", reason="bounce")
    page = admin_client.post(reverse("admin:batch_new"), {**FORM, "_preview": "1"}).content.decode()
    assert "<strong>1</strong> recipient(s) (cap 50)" in page
    assert "Holiday schedule for Brooklyn Tech" in page
    assert "Gone School &lt;gone@school.example.org&gt;: Hard bounce" in page
    assert not WorkflowRun.objects.exists()


def test_preview_says_how_many_matching_customers_cannot_be_reached(admin_client):
    CustomerFactory(company_name="Brooklyn Tech")
    CustomerFactory(company_name="Closed School", is_inactive=True)
    CustomerFactory(company_name="No Address", email="")
    CustomerFactory(company_name="Other Bid", bid="B0001", is_inactive=True)
    page = admin_client.post(reverse("admin:batch_new"), {**FORM, "_preview": "1"}).content.decode()
    assert "<strong>1</strong> recipient(s) (cap 50)" in page
    assert (
        "Also matched by the filter but left out: 2 customer(s) marked inactive or without an "
        "email address." in page
    )


def test_preview_leaves_out_an_address_that_is_not_an_email_address(admin_client):
    CustomerFactory(company_name="Brooklyn Tech")
    CustomerFactory(company_name="Bad Import", email="broken2@@example")
    page = admin_client.post(reverse("admin:batch_new"), {**FORM, "_preview": "1"}).content.decode()
    assert "<strong>1</strong> recipient(s) (cap 50)" in page
    assert "<h3>Left out (not an email address)</h3>" in page
    assert "Bad Import &lt;broken2@@example&gt;: fix the address in Admin → Customers" in page


def test_a_bad_filter_or_variable_is_shown_on_its_field(admin_client):
    page = admin_client.post(
        reverse("admin:batch_new"),
        {**FORM, "customer_cohort_filter": "colour=red", "_preview": "1"},
    ).content.decode()
    assert "Unknown filter field colour" in page
    page = admin_client.post(
        reverse("admin:batch_new"),
        {**FORM, "body_template": "Hi {{ nickname }}", "_preview": "1"},
    ).content.decode()
    assert "Unknown variable in the body template: nickname" in page
    assert not WorkflowRun.objects.exists()


def test_every_wrong_field_of_the_batch_form_is_shown_at_once_on_its_field(admin_client, settings):
    response = admin_client.post(
        reverse("admin:batch_new"),
        {
            "customer_cohort_filter": "colour=red",
            "subject": "Hi {{ nickname }}",
            "body_template": "Dear {{ customer_name ",
            "max_recipients": "0",
            "_preview": "1",
        },
    )
    assert "Please correct the errors below." in response.content.decode()
    errors = {name: list(e) for name, e in response.context["form"].errors.items()}
    assert set(errors) == {"customer_cohort_filter", "subject", "body_template", "max_recipients"}
    assert "Unknown filter field colour" in errors["customer_cohort_filter"][0]
    assert errors["subject"][0].startswith("Unknown variable in the subject: nickname")
    assert errors["body_template"][0].startswith("Unclosed {{ in the body template")
    ceiling = settings.BATCH_MAX_RECIPIENTS_CEILING
    assert errors["max_recipients"] == [f"Max recipients must be between 1 and {ceiling}."]
    assert not WorkflowRun.objects.exists()


def test_the_kill_switch_blocks_a_launch_with_a_clear_message(admin_client):
    CustomerFactory()
    KillSwitch.objects.create(name="high_risk_ops", scope="high_risk_ops", is_on=True)
    page = admin_client.post(reverse("admin:batch_new"), {**FORM, "_launch": "1"}, follow=True)
    assert "The kill switch high_risk_ops is on: launches are blocked." in page.content.decode()
    assert not WorkflowRun.objects.exists()


def test_launch_shows_a_confirmation_and_stages_nothing_before_it(admin_client):
    CustomerFactory.create_batch(3)
    page = admin_client.post(reverse("admin:batch_new"), {**FORM, "_launch": "1"})
    text = page.content.decode()
    assert "Launching stages a batch run for 3 recipient(s) and its HITL gate" in text
    assert "Yes, launch for 3 recipient(s)" in text
    assert not WorkflowRun.objects.exists()


def test_launch_gate_bulk_approve_dispatch_progress(admin_client):
    CustomerFactory.create_batch(3)
    response = admin_client.post(
        reverse("admin:batch_new"), {**FORM, "_launch": "1", "post": "yes"}
    )
    run = WorkflowRun.objects.get()
    assert response.url == reverse("admin:notifications_workflowrun_change", args=[run.id])

    changelist = reverse("admin:notifications_proposedaction_changelist")
    envelope = run.proposed_actions.get()
    confirm = admin_client.post(
        changelist, {"action": "approve_selected", "_selected_action": [envelope.id]}
    )
    assert "1 batch gate(s) open" in confirm.content.decode()
    gate = admin_client.post(
        changelist,
        {"action": "approve_selected", "_selected_action": [envelope.id], "post": "yes"},
        follow=True,
    ).content.decode()
    assert "3 review(s) staged from the batch gate. Review them: " in gate
    assert (
        f'<a href="{changelist}?workflow_run__id__exact={run.id}&amp;'
        f'action_type__exact=hitl_review">run {run.id}</a>' in gate
    )
    assert "recipient(s) approved" not in gate
    listed = admin_client.get(
        changelist, {"workflow_run__id__exact": run.id, "action_type__exact": "hitl_review"}
    )
    assert listed.context["cl"].result_count == 3
    reviews = list(
        run.proposed_actions.filter(action_type="hitl_review").values_list("id", flat=True)
    )
    assert len(reviews) == 3

    confirm = admin_client.post(
        changelist, {"action": "approve_selected", "_selected_action": reviews}
    )
    assert "Approve: 3 recipient(s) will each get the message shown." in confirm.content.decode()
    done = admin_client.post(
        changelist,
        {"action": "approve_selected", "_selected_action": reviews, "post": "yes"},
        follow=True,
    )
    assert "3 recipient(s) approved; 3 deliveries staged." in done.content.decode()
    now = timezone.now() + timedelta(seconds=1)
    dispatch_due(now=now, clock=ManualClock(now))
    page = admin_client.get(
        reverse("admin:notifications_workflowrun_change", args=[run.id])
    ).content.decode()
    assert (
        "3 sent · 0 failed · 0 not sent (skipped, expired or cancelled) · 0 pending · "
        "0 awaiting review · 0 rejected — of 3 (100%)" in page
    )
    assert Delivery.objects.filter(status="sent").count() == 3
    run.refresh_from_db()
    assert run.status == "completed"


def test_a_second_bulk_approve_is_a_logged_no_op(admin_client):
    CustomerFactory.create_batch(2)
    admin_client.post(reverse("admin:batch_new"), {**FORM, "_launch": "1", "post": "yes"})
    run = WorkflowRun.objects.get()
    changelist = reverse("admin:notifications_proposedaction_changelist")
    admin_client.post(
        changelist,
        {
            "action": "approve_selected",
            "_selected_action": [run.proposed_actions.get().id],
            "post": "yes",
        },
    )
    ids = list(
        ProposedAction.objects.filter(action_type="hitl_review").values_list("id", flat=True)
    )
    admin_client.post(
        changelist, {"action": "approve_selected", "_selected_action": ids, "post": "yes"}
    )
    again = admin_client.post(
        changelist,
        {"action": "approve_selected", "_selected_action": ids, "post": "yes"},
        follow=True,
    )
    assert (
        "0 recipient(s) approved; 0 deliveries staged; 2 already decided (no-op)."
        in again.content.decode()
    )
    assert Delivery.objects.count() == 2
    gate_again = admin_client.post(
        changelist,
        {
            "action": "approve_selected",
            "_selected_action": [run.proposed_actions.get(action_type="workflow_batch_notify").id],
            "post": "yes",
        },
        follow=True,
    )
    assert (
        f"The batch gate of run {run.id} was already approved by admin (no-op)."
        in gate_again.content.decode()
    )
    assert "0 recipient(s) approved" not in gate_again.content.decode()
    assert ProposedAction.objects.filter(action_type="hitl_review").count() == 2


def test_the_48_hour_warning_says_on_its_field_what_to_do(admin_client):
    CustomerFactory()
    admin_client.post(reverse("admin:batch_new"), {**FORM, "_launch": "1", "post": "yes"})
    run = WorkflowRun.objects.get()
    changelist = reverse("admin:notifications_proposedaction_changelist")
    for kind in ("workflow_batch_notify", "hitl_review"):
        ids = list(run.proposed_actions.filter(action_type=kind).values_list("id", flat=True))
        admin_client.post(
            changelist, {"action": "approve_selected", "_selected_action": ids, "post": "yes"}
        )
    now = timezone.now() + timedelta(seconds=1)
    dispatch_due(now=now, clock=ManualClock(now))
    assert Delivery.objects.get().status == "sent"

    page = admin_client.post(reverse("admin:batch_new"), {**FORM, "_launch": "1"}).content.decode()
    assert "emailed by batch_notify in the last 48 hours" in page
    assert "Tick this to send anyway, then launch again (or tighten the filter)." in page
    assert WorkflowRun.objects.count() == 1


def test_approving_while_a_kill_switch_holds_the_batch_says_so(admin_client):
    CustomerFactory()
    admin_client.post(reverse("admin:batch_new"), {**FORM, "_launch": "1", "post": "yes"})
    run = WorkflowRun.objects.get()
    KillSwitch.objects.create(name="stop email", scope="channel", channel="email", is_on=True)
    changelist = reverse("admin:notifications_proposedaction_changelist")
    confirm = admin_client.post(
        changelist,
        {"action": "approve_selected", "_selected_action": [run.proposed_actions.get().id]},
    ).content.decode()
    assert (
        f"kill switch stop email is on: run {run.id}&#x27;s deliveries will be staged but wait, "
        "frozen, until it is turned off" in confirm
    )


def test_rejecting_a_gate_says_its_run_is_cancelled_and_cancelling_again_says_nothing_to_do(
    admin_client,
):
    CustomerFactory.create_batch(2)
    admin_client.post(reverse("admin:batch_new"), {**FORM, "_launch": "1", "post": "yes"})
    run = WorkflowRun.objects.get()
    envelope = run.proposed_actions.get()
    page = admin_client.post(
        reverse("admin:notifications_proposedaction_changelist"),
        {"action": "reject_selected", "_selected_action": [envelope.id], "post": "yes"},
        follow=True,
    ).content.decode()
    assert "1 batch gate(s) rejected: their runs are cancelled." in page
    assert "0 recipient(s) rejected" not in page
    run.refresh_from_db()
    assert run.status == "cancelled"
    cancel = reverse("admin:notifications_workflowrun_changelist") + f"{run.id}/cancel/"
    again = admin_client.post(cancel, {"post": "yes"}, follow=True).content.decode()
    assert f"Run {run.id} was already cancelled: nothing to cancel." in again


def test_approving_reviews_says_how_many_recipients_were_suppressed_since_the_launch(
    admin_client,
):
    customers = CustomerFactory.create_batch(3)
    admin_client.post(reverse("admin:batch_new"), {**FORM, "_launch": "1", "post": "yes"})
    run = WorkflowRun.objects.get()
    changelist = reverse("admin:notifications_proposedaction_changelist")
    envelope = run.proposed_actions.get()
    admin_client.post(
        changelist, {"action": "approve_selected", "_selected_action": [envelope.id], "post": "yes"}
    )
    tracking.suppress(
        address=customers[1].email.upper(),
        channel="email",
        reason="unsubscribe",
        source="footer link",
        by="test",
        now=timezone.now(),
    )
    reviews = list(
        run.proposed_actions.filter(action_type="hitl_review").values_list("id", flat=True)
    )
    confirm = admin_client.post(
        changelist, {"action": "approve_selected", "_selected_action": reviews}
    ).content.decode()
    assert (
        "Approve: 2 recipient(s) will each get the message shown; 1 recipient(s) are "
        "suppressed or inactive now (unsubscribed, bounced or complained, suppressed by hand, "
        "or marked inactive, since the launch): approved, they are skipped, not sent." in confirm
    )
    Customer.objects.filter(id=customers[2].id).update(email="broken,example.org")  # an import
    confirm = html.unescape(
        admin_client.post(
            changelist, {"action": "approve_selected", "_selected_action": reviews}
        ).content.decode()
    )
    assert (
        "Approve: 1 recipient(s) will each get the message shown; 1 recipient(s) are suppressed "
        in confirm
    )
    assert (
        "1 recipient(s) have no valid email address now (changed since the launch): approved, "
        "their send fails and counts towards the batch's breaker; correct them in Customers "
        "first." in confirm
    )
    rejecting = admin_client.post(
        changelist, {"action": "reject_selected", "_selected_action": reviews}
    ).content.decode()
    assert "Reject: 3 recipient(s) will not be sent anything." in rejecting


def test_run_actions_say_which_selected_runs_they_leave_alone_and_why(admin_client):
    from notifications import batch

    workflow = batch.batch_workflow()
    aborted, done, running = (
        WorkflowRun.objects.create(workflow=workflow, status=status)
        for status in ("aborted", "completed", "running")
    )
    changelist = reverse("admin:notifications_workflowrun_changelist")
    everything = [aborted.id, done.id, running.id]
    page = admin_client.post(
        changelist, {"action": "resume_runs", "_selected_action": everything}
    ).content.decode()
    assert "Resume 1 aborted batch(es)" in page
    assert (
        f"Left alone: run {done.id} (completed), run {running.id} (sending): only an aborted "
        "batch can be resumed." in page
    )
    KillSwitch.objects.create(name="stop email", scope="channel", channel="email", is_on=True)
    other = WorkflowRun.objects.create(
        workflow=Workflow.objects.create(name="kiosk alerts", type=Workflow.Type.TRIGGER),
        status="aborted",
    )
    page = admin_client.post(
        changelist, {"action": "resume_runs", "_selected_action": [aborted.id, other.id]}
    ).content.decode()
    assert "Resume 1 aborted batch(es)" in page
    assert (
        "But kill switch(es) stop email are on: their deliveries stay frozen until turned off."
        in page
    )
    assert f"Left alone: run {other.id} (aborted (resume or cancel)): only an aborted batch" in page
    KillSwitch.objects.all().delete()
    page = admin_client.post(
        changelist, {"action": "cancel_runs", "_selected_action": everything}
    ).content.decode()
    assert "Cancel 2 batch(es)" in page
    assert f"Left alone: run {done.id} (completed): only an unfinished batch can be" in page

    nothing = admin_client.post(
        changelist, {"action": "resume_runs", "_selected_action": [done.id]}, follow=True
    )
    assert [str(m) for m in nothing.context["messages"]] == [
        f"Nothing to resume: run {done.id} (completed): only an aborted batch can be resumed."
    ]
    nothing = admin_client.post(
        changelist,
        {"action": "cancel_runs", "_selected_action": [done.id], "post": "yes"},
        follow=True,
    )
    assert [str(m) for m in nothing.context["messages"]] == [
        f"Nothing to cancel: run {done.id} (completed): only an unfinished batch can be cancelled."
    ]
    done.refresh_from_db()
    assert done.status == "completed"
    ProposedAction.objects.create(
        action_type="hitl_review", entity_ref="review", workflow_run=running, status="pending"
    )
    cancelled = admin_client.post(
        changelist,
        {"action": "cancel_runs", "_selected_action": everything, "post": "yes"},
        follow=True,
    )
    assert [str(m) for m in cancelled.context["messages"]] == [
        "2 run(s) cancelled; 0 deliveries will not go; 1 pending review(s) rejected. Left alone: "
        f"run {done.id} (completed): only an unfinished batch can be cancelled."
    ]
    finished = [
        WorkflowRun.objects.create(workflow=workflow, status="completed") for _ in range(11)
    ]
    many = admin_client.post(
        changelist,
        {"action": "resume_runs", "_selected_action": [r.id for r in finished]},
        follow=True,
    )
    (note,) = [str(m) for m in many.context["messages"]]
    assert note.startswith(f"Nothing to resume: run {finished[0].id} (completed), ")
    assert note.endswith(" and 1 more: only an aborted batch can be resumed.")


def _listed_with_runs(client, url, count: int, make_row) -> tuple[int, str]:
    """Queries of one page of a list whose rows belong to `count` more runs, and its page."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from notifications import batch

    workflow = batch.batch_workflow()
    for _ in range(count):
        make_row(WorkflowRun.objects.create(workflow=workflow))
    with CaptureQueriesContext(connection) as queries:
        page = client.get(url)
    assert page.status_code == 200
    return len(queries), page.content.decode()


@pytest.mark.parametrize(
    ("url", "make_row"),
    [
        (
            "admin:notifications_proposedaction_changelist",
            lambda run: ProposedAction.objects.create(
                action_type="hitl_review", entity_ref="review", workflow_run=run
            ),
        ),
        (
            "admin:notifications_delivery_changelist",
            lambda run: DeliveryFactory(workflow_run=run),
        ),
    ],
)
def test_the_run_filter_names_its_runs_without_a_query_per_run(admin_client, url, make_row):
    url = reverse(url)
    few, _ = _listed_with_runs(admin_client, url, 2, make_row)
    many, page = _listed_with_runs(admin_client, url, 6, make_row)

    assert many == few
    runs = WorkflowRun.objects.order_by("-pk")
    assert [f"?workflow_run__id__exact={run.pk}" in page for run in runs] == [True] * 8
    assert all(f"{run} </a>" in page or f"{run}</a>" in page for run in runs)
    # A run with no rows in this list is not offered.
    empty = WorkflowRun.objects.create(workflow=runs[0].workflow)
    assert f"workflow_run__id__exact={empty.pk}" not in admin_client.get(url).content.decode()
