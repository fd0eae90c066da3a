"""Seed 001's journey in a real headless chromium: cohort → preview → launch (confirmed) →
HITL gate → cohort-wide approval → dispatch → 100 % progress and the deliveries."""

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import expect

from notifications.dispatch import ManualClock, dispatch_due
from notifications.models import Delivery, RecordedMessage, WorkflowRun
from tests.notifications.factories import CustomerFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _select_all_and(page, action: str):
    page.check("#action-toggle")
    page.select_option("select[name=action]", action)
    page.click("button[name=index]")


def test_batch_notification_from_cohort_to_100_percent(
    live_server, chromium_page, artifacts_dir, settings
):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    get_user_model().objects.create_superuser("mike", "mike@example.com", "correct horse")
    for name in ("Brooklyn Tech", "Stuyvesant", "Bronx Science"):
        CustomerFactory(company_name=name, bid="B5875")
    CustomerFactory(company_name="Elsewhere", bid="B0001")
    page = chromium_page
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "mike")
    page.fill("#id_password", "correct horse")
    page.click("input[type=submit]")

    page.goto(f"{live_server.url}/admin/notifications/workflowrun/")
    page.click("text=New batch notification")
    page.fill("#id_subject", "Holiday schedule for {{ customer_name }}")
    page.fill("#id_body_template", "Dear {{ customer_name }},\nwe close on 24 December.")
    page.fill("#id_customer_cohort_filter", "bogus=1")
    # While the form cannot be previewed, the live preview says why instead of going blank.
    expect(page.locator("#preview-problems")).to_contain_text("Unknown filter field bogus")
    page.fill("#id_customer_cohort_filter", "bid=B5875")
    # The preview is live: it appears a moment after typing stops, without pressing Preview.
    expect(page.locator("#batch-preview")).to_contain_text("3 recipient(s) (cap 50)")
    expect(page.locator("#sample-subject")).to_contain_text("Holiday schedule for")
    page.click("#launch-button")
    # Launching asks first, saying what will happen and to how many.
    expect(page.locator("#confirm-action")).to_contain_text(
        "Launching stages a batch run for 3 recipient(s) and its HITL gate"
    )
    expect(page.locator("#confirm-action .confirm-items li")).to_have_count(3)
    assert not WorkflowRun.objects.exists()
    page.click("#confirm-button")
    expect(page.locator(".messagelist")).to_contain_text("staged for 3 recipients")
    run = WorkflowRun.objects.get()

    page.click(".object-tools >> text=Approve the HITL gate")
    _select_all_and(page, "approve_selected")
    page.click("input[type=submit][value^='Yes']")
    page.goto(f"{live_server.url}/admin/notifications/workflowrun/{run.id}/change/")
    page.click(".object-tools >> text=Recipient reviews")
    _select_all_and(page, "approve_selected")
    expect(page.locator("#confirm-action")).to_contain_text(
        "3 recipient(s) will each get the message shown"
    )
    page.click("input[type=submit][value^='Yes']")
    expect(page.locator(".messagelist")).to_contain_text("3 recipient(s) approved; 3 deliveries")

    now = timezone.now()
    dispatch_due(now=now, clock=ManualClock(now))  # what the worker does next

    page.goto(f"{live_server.url}/admin/notifications/workflowrun/{run.id}/change/")
    expect(page.locator(".herald-progress-text")).to_contain_text("of 3 (100%)")
    page.screenshot(path=f"{artifacts_dir}/batch-journey.png", full_page=True)
    page.click(".object-tools >> text=Deliveries")
    expect(page.locator("#result_list tbody tr")).to_have_count(3)
    page.screenshot(path=f"{artifacts_dir}/batch-deliveries.png", full_page=True)
    assert Delivery.objects.filter(status="sent").count() == 3
    assert RecordedMessage.objects.count() == 3
    run.refresh_from_db()
    assert run.status == "completed"
