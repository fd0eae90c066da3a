"""Journey 4 in chromium: a kiosk reports its connection lost → staff run the trigger
evaluator from the admin (what beat does every 5 minutes) → one manager's alert is sent,
the other's is queued by his cadence, and the delivery list says why and until when."""

import json
from datetime import timedelta
from urllib.request import Request, urlopen

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from cadence.models import Persona
from notifications.dispatch import ManualClock, dispatch_due
from notifications.models import Delivery, RecordedMessage
from tests.browser.conftest import run_action
from tests.cadence.factories import StakeholderFactory
from tests.notifications.factories import DeliveryFactory
from tests.triggers.helpers import kiosk, project, trigger_workflow

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _heartbeat(live_server, device, **state) -> dict:
    """The kiosk's own door: POST /kiosks/<id>/heartbeat with its token."""
    body = {"charging": True, "screen_state": True, "battery_level": 80, **state}
    request = Request(
        f"{live_server.url}/kiosks/{device.pk}/heartbeat",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Kiosk-Token": device.token},
        method="POST",
    )
    with urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_a_kiosk_goes_offline_and_the_alerts_go_or_wait_with_their_reason(
    live_server, staff_page, artifacts_dir, recording_email
):
    page, _ = staff_page()
    managers = Persona.objects.create(
        name="Manager", cooldown_hours=2, max_per_day=5, max_per_week=20, max_per_month=80
    )
    dana = StakeholderFactory(name="Dana", email="dana@sites.example.org", persona=managers)
    eli = StakeholderFactory(name="Eli", email="eli@sites.example.org", persona=managers)
    # Dana heard from Herald 30 minutes ago: her 2-hour cooldown holds the next alert.
    earlier = timezone.now() - timedelta(minutes=30)
    DeliveryFactory(
        recipient_key=dana.recipient_key,
        address=dana.email,
        message_type="alert",
        status="sent",
        send_at=earlier,
        sent_at=earlier,
    )
    trigger_workflow(name="Kiosk offline", events=("kiosk_offline",), personas=[managers])
    device = kiosk(12, project(3, "Hudson Yards"))

    assert _heartbeat(live_server, device, connection_status=False)["ok"] is True

    page.goto(f"{live_server.url}/admin/kiosks/kiosk/?health=offline")
    expect(page.locator("#result_list")).to_contain_text("OFFLINE")
    page.goto(f"{live_server.url}/admin/notifications/triggerworkflow/")
    run_action(page, "evaluate_now", rows=["Kiosk offline"])
    expect(page.locator("#confirm-action")).to_contain_text("every active trigger workflow (1)")
    page.click("#confirm-button")
    expect(page.locator(".messagelist")).to_contain_text(
        "1 fired, 0 held by a cooldown, 0 not watched, 0 without anyone to tell. "
        "Deliveries: 1 now, 1 queued by cadence, 0 expired"
    )
    now = timezone.now()
    dispatch_due(now=now, clock=ManualClock(now))  # what the worker does next

    page.goto(f"{live_server.url}/admin/notifications/delivery/?q=kiosk_offline")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    sent_row = rows.filter(has_text="eli@sites.example.org")
    queued_row = rows.filter(has_text="dana@sites.example.org")
    expect(sent_row.locator(".field-status_badge")).to_have_text("Sent")
    expect(queued_row.locator(".field-status_badge")).to_have_text("Scheduled")
    why = queued_row.locator(".field-why_and_when")
    expect(why).to_contain_text("cadence: cooldown")
    expect(why).to_contain_text("expected")
    page.screenshot(path=f"{artifacts_dir}/kiosk-offline-journey.png", full_page=True)

    alerts = Delivery.objects.filter(context_key__startswith="kiosk_offline:")
    sent = alerts.get(recipient_key=eli.recipient_key)
    queued = alerts.get(recipient_key=dana.recipient_key)
    assert sent.status == "sent" and RecordedMessage.objects.filter(to=eli.email).exists()
    assert queued.status == "scheduled" and queued.status_reason.startswith("cadence: cooldown")
    # Queued until her cooldown ends: two hours after the earlier message.
    assert abs((queued.send_at - (earlier + timedelta(hours=2))).total_seconds()) < 60
    assert queued.status_reason.split("— queued until ")[1][:13] in why.inner_text()
