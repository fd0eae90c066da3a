"""Journey 2 in chromium: per-recipient review of a batch. Two recipients are rejected and
the rest approved with bulk actions, each through its confirmation page; the database holds
the decisions, and deliveries exist only for the approved."""

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from notifications import batch
from notifications.models import Delivery, ProposedAction, WorkflowRun
from tests.browser.conftest import run_action
from tests.notifications.factories import CustomerFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCHOOLS = ("Brooklyn Tech", "Stuyvesant", "Bronx Science", "Townsend Harris", "LaGuardia")
REJECTED = ("Stuyvesant", "LaGuardia")


def test_per_recipient_approve_and_reject_with_bulk_actions(
    live_server, staff_page, artifacts_dir, recording_email
):
    page, mike = staff_page()
    for name in SCHOOLS:
        CustomerFactory(company_name=name, bid="B5875")
    now = timezone.now()
    run = batch.batch_launch(
        user=mike,
        cohort_filter="bid=B5875",
        subject="New price list for {{ customer_name }}",
        body_template="Dear {{ customer_name }},\nprices change on 1 January.",
        now=now,
    )
    batch.envelope_approve(envelope=run.proposed_actions.get(), user=mike, now=now)

    page.goto(f"{live_server.url}/admin/notifications/workflowrun/{run.id}/change/")
    page.click(".object-tools >> text=Recipient reviews")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(5)
    # Each review shows the personalized subject the recipient would get.
    expect(page.locator("#result_list")).to_contain_text("New price list for Bronx Science")
    # At 1400 px every column is on the screen, the decision's last one too (the entity
    # ref, one unbreakable word, pushed status and decided by/at out of sight).
    page.set_viewport_size({"width": 1400, "height": 1000})
    last = page.locator("#result_list th.column-decided_at").bounding_box()
    assert last["x"] + last["width"] <= 1400, last
    page.set_viewport_size({"width": 1600, "height": 1000})

    # Reject two recipients: the confirmation page names them and says what happens.
    run_action(page, "reject_selected", rows=list(REJECTED))
    confirm = page.locator("#confirm-action")
    expect(confirm).to_contain_text("Reject: 2 recipient(s) will not be sent anything.")
    for name in REJECTED:
        expect(confirm.locator(".confirm-items")).to_contain_text(name)
    assert ProposedAction.objects.filter(status="rejected").count() == 0  # not before "Yes"
    page.click("#confirm-button")
    expect(page.locator(".messagelist")).to_contain_text("2 recipient(s) rejected.")

    # Approve the rest: only those still waiting, selected all at once.
    page.goto(
        f"{live_server.url}/admin/notifications/proposedaction/"
        f"?workflow_run__id__exact={run.id}&action_type__exact=hitl_review&waiting=yes"
    )
    expect(rows).to_have_count(3)
    run_action(page, "approve_selected")
    expect(confirm).to_contain_text("Approve: 3 recipient(s) will each get the message shown.")
    expect(page.locator("#confirm-button")).to_have_value("Yes, approve 3")
    page.click("#confirm-button")
    expect(page.locator(".messagelist")).to_contain_text("3 recipient(s) approved; 3 deliveries")

    page.goto(f"{live_server.url}/admin/notifications/workflowrun/{run.id}/change/")
    expect(page.locator(".herald-progress-text")).to_contain_text(
        "3 pending · 0 awaiting review · 2 rejected — of 5 (40%)"
    )
    page.screenshot(path=f"{artifacts_dir}/review-journey.png", full_page=True)

    reviews = ProposedAction.objects.filter(workflow_run=run, action_type="hitl_review")
    decided = {p.customer.company_name: (p.status, p.decided_by) for p in reviews}
    assert decided == {
        name: ("rejected" if name in REJECTED else "approved", "mike") for name in SCHOOLS
    }
    staged = Delivery.objects.filter(workflow_run=run)
    assert sorted(staged.values_list("subject", flat=True)) == sorted(
        f"New price list for {name}" for name in SCHOOLS if name not in REJECTED
    )
    assert set(staged.values_list("status", flat=True)) == {"scheduled"}
    run.refresh_from_db()
    assert run.status not in WorkflowRun.FINISHED  # the approved three are still to go
