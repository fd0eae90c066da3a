"""Journey 6 in chromium: after `seed_demo`, the admin index dashboard shows the numbers the
database holds: approvals waiting (linked), deliveries of the week by channel, the kill
switch, kiosk health, queued deliveries."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db.models import Count
from django.utils import timezone
from playwright.sync_api import expect

from kiosks.health import offline_filter, unhealthy_filter
from kiosks.models import Kiosk
from notifications.models import Delivery, ProposedAction

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_dashboard_shows_the_seeded_numbers(live_server, staff_page, artifacts_dir):
    call_command("seed_demo")
    page, _ = staff_page()
    page.goto(f"{live_server.url}/admin/")
    now = timezone.now()

    kiosks = Kiosk.objects.aggregate(
        total=Count("id"),
        offline=Count("id", filter=offline_filter(now)),
        unhealthy=Count("id", filter=unhealthy_filter(now)),
    )
    assert kiosks["total"] == 60 and 0 < kiosks["offline"] < kiosks["unhealthy"] < 60
    expect(page.locator("#panel-kiosks")).to_contain_text(
        f"{kiosks['total']} kiosks: {kiosks['offline']} offline, "
        f"{kiosks['unhealthy']} with a health issue."
    )

    week_start = (now - timedelta(days=6)).replace(hour=0, minute=0, second=0, microsecond=0)
    week = Delivery.objects.filter(created_at__gte=week_start)
    expect(page.locator("#panel-deliveries h2")).to_have_text(
        f"Deliveries, last 7 days ({week.count()})"
    )
    expect(page.locator("#panel-deliveries svg.herald-chart")).to_be_visible()
    table = page.locator("#panel-deliveries table tr")
    for channel in ("email", "sms", "whatsapp"):  # the same days as the chart's
        row = table.filter(has_text=channel).first
        total = week.filter(channel=channel).count()
        assert total > 0
        expect(row.locator("td").nth(1)).to_have_text(str(total))

    switch = page.locator("#panel-kill-switches")
    expect(switch).to_contain_text("high_risk_ops: off")

    waiting = (
        ProposedAction.objects.filter(status="pending")
        .values("workflow_run_id", "action_type")
        .annotate(n=Count("id"))
        .order_by("workflow_run_id")
    )
    assert len(waiting) == 2
    approvals = page.locator("#panel-approvals li")
    expect(approvals).to_have_count(2)
    for item, row in zip(approvals.all(), waiting, strict=True):
        expect(item).to_contain_text(
            f"run {row['workflow_run_id']}: {row['n']} {row['action_type']}"
        )
    queued = Delivery.objects.filter(status="scheduled").count()
    expect(page.locator("#panel-queued")).to_contain_text(f"{queued} — ")

    # The approvals are linked to the proposals waiting for a decision.
    reviews = next(r for r in waiting if r["action_type"] == "hitl_review")
    page.locator("#panel-approvals a", has_text="hitl_review").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(reviews["n"])
    page.go_back()
    expect(page.locator("#herald-dashboard")).to_be_visible()
    page.screenshot(path=f"{artifacts_dir}/dashboard-journey.png", full_page=True)
