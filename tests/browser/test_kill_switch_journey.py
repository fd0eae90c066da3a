"""Journey 3 in chromium: staff turn high_risk_ops on through the kill switch action (its
confirmation page asks for a reason), then a batch launch is blocked with a clear message
and nothing is staged."""

import pytest
from playwright.sync_api import expect

from notifications.models import KillSwitch, KillSwitchChange, WorkflowRun
from tests.browser.conftest import run_action
from tests.notifications.factories import CustomerFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

BLOCKED = "The kill switch high_risk_ops is on: launches are blocked."


def test_the_kill_switch_blocks_a_launch_with_a_clear_message(
    live_server, staff_page, artifacts_dir
):
    page, _ = staff_page()
    KillSwitch.objects.create(name="high_risk_ops", scope=KillSwitch.Scope.HIGH_RISK)
    CustomerFactory.create_batch(2, bid="B5875")

    page.goto(f"{live_server.url}/admin/notifications/killswitch/")
    run_action(page, "turn_on", rows=["high_risk_ops"])
    confirm = page.locator("#confirm-action")
    expect(confirm).to_contain_text("Turning on 1 switch(es) freezes every matching scheduled")
    expect(confirm).to_contain_text("every launch of a batch notification is blocked")
    assert not KillSwitch.objects.get().is_on  # nothing before the confirmation
    page.fill("#id_reason", "provider incident, hold everything risky")
    page.click("#confirm-button")
    expect(page.locator(".messagelist")).to_contain_text("1 kill switch(es) turned on.")
    expect(page.locator("#result_list")).to_contain_text("ON — holding sends")

    page.goto(f"{live_server.url}/admin/notifications/workflowrun/batch/new/")
    page.fill("#id_customer_cohort_filter", "bid=B5875")
    page.fill("#id_subject", "Holiday schedule for {{ customer_name }}")
    page.fill("#id_body_template", "Dear {{ customer_name }},\nwe close on 24 December.")
    # The live preview already says so, before anyone presses Launch ...
    expect(page.locator("#batch-preview .errornote")).to_contain_text(BLOCKED)
    page.click("#launch-button")
    # ... and Launch refuses with the same words: no confirmation page, no run.
    expect(page.locator(".messagelist .error")).to_contain_text(BLOCKED)
    expect(page.locator("#confirm-action")).to_have_count(0)
    page.screenshot(path=f"{artifacts_dir}/kill-switch-journey.png", full_page=True)

    switch = KillSwitch.objects.get()
    assert (switch.is_on, switch.changed_by) == (True, "mike")
    assert switch.reason == "provider incident, hold everything risky"
    change = KillSwitchChange.objects.get()
    assert (change.turned_on, change.by, change.reason) == (True, "mike", switch.reason)
    assert not WorkflowRun.objects.exists()
