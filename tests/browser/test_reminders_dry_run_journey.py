"""Journey 5 in chromium: staff open the reminder settings, dry-run the discoverer and read
the bucket counts; each count is what the database holds, the run list behind each bucket
shows as many runs, and nothing was emitted."""

import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from notifications.models import Delivery, Event
from production_runs import demo
from production_runs.discoverer import KINDS, Thresholds, bucket_filter, with_idle_since
from production_runs.models import (
    ACTIVE_STATUSES,
    ProductionRun,
    ReminderSettings,
    ReminderState,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _count(page, key: str) -> int:
    return int(page.locator(f"#row-{key} .count").inner_text())


def test_the_reminders_dry_run_shows_bucket_counts_that_match_the_database(
    live_server, staff_page, artifacts_dir
):
    page, _ = staff_page()
    demo.seed(timezone.now())  # 40 partners, 150 runs across the buckets
    states_before = list(ReminderState.objects.values_list("id", "reminder_count"))

    page.goto(f"{live_server.url}/admin/production_runs/remindersettings/")
    page.click("text=Dry-run the discoverer")
    expect(page.locator("#reminder-dry-run")).to_contain_text("Nothing was emitted or changed.")

    now = timezone.now()
    thresholds = Thresholds.of(ReminderSettings.load())
    runs = with_idle_since(ProductionRun.objects.all())
    expected = {
        kind: runs.filter(
            bucket_filter(kind, now=now, thresholds=thresholds), partner__isnull=False
        ).count()
        for kind in KINDS
    }
    assert all(expected.values()), expected  # the demo fills every bucket
    assert {kind: _count(page, kind) for kind in KINDS} == expected
    active = ProductionRun.objects.filter(status__in=ACTIVE_STATUSES)
    assert _count(page, "total_inspected") == active.count()
    assert _count(page, "skipped_no_partner") == active.filter(partner__isnull=True).count()
    assert _count(page, "total_inspected") == (
        sum(expected.values())
        + _count(page, "skipped_no_partner")
        + _count(page, "skipped_not_overdue")
    )

    # Each bucket links to the runs it counts: the list shows as many.
    page.locator("#row-idle a").click()
    expect(page.locator("#changelist-filter")).to_contain_text("reminder bucket (now)")
    paginator = page.locator("#changelist-form .paginator")
    expect(paginator).to_contain_text(re.compile(rf"\b{expected['idle']} production runs"))
    page.go_back()
    page.screenshot(path=f"{artifacts_dir}/reminders-dry-run-journey.png", full_page=True)

    # A dry run: no event, no delivery, no escalation state moved.
    assert not Event.objects.exists()
    assert not Delivery.objects.exists()
    assert list(ReminderState.objects.values_list("id", "reminder_count")) == states_before
