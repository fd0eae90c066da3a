from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from kiosks.models import Kiosk
from notifications.models import Delivery, KillSwitch, ProposedAction
from tests.notifications.factories import DeliveryFactory, WorkflowRunFactory

pytestmark = pytest.mark.django_db


def test_the_dashboard_shows_the_numbers_of_the_world(admin_client):
    now = timezone.now()
    DeliveryFactory.create_batch(3, status="sent", created_at=now - timedelta(days=1))
    DeliveryFactory(status="failed", created_at=now)
    DeliveryFactory(
        status="scheduled",
        status_reason="cadence: daily limit — queued",
        send_at=now + timedelta(hours=4),
    )
    run = WorkflowRunFactory(
        status="aborted", status_reason="circuit breaker: 5 consecutive failed sends"
    )
    ProposedAction.objects.create(action_type="hitl_review", entity_ref="x", workflow_run=run)
    KillSwitch.objects.create(
        name="high_risk_ops", scope="high_risk_ops", is_on=True, reason="audit"
    )

    page = admin_client.get("/admin/").content.decode()
    assert "Deliveries, last 7 days (5)" in page
    assert f"run {run.id}: 1 hitl_review" in page
    assert "1 — cadence" in page
    assert "circuit breaker: 5 consecutive failed sends" in page
    assert '<strong style="color:#dc2626">ON</strong> — audit' in page
    assert "<svg" in page and "herald-chart" in page


def test_the_dashboard_after_seed_demo_matches_the_database(admin_client):
    call_command("seed_demo")
    now = timezone.now()
    page = admin_client.get("/admin/").content.decode()
    week_start = (now - timedelta(days=6)).replace(hour=0, minute=0, second=0, microsecond=0)
    week = Delivery.objects.filter(created_at__gte=week_start).count()
    assert week > 0
    assert f"Deliveries, last 7 days ({week})" in page
    kiosks = Kiosk.objects.count()
    offline = sum(
        1
        for k in Kiosk.objects.all()
        if not k.connection_status
        or k.last_heartbeat_at is None
        or k.last_heartbeat_at < now - timedelta(minutes=5)
    )
    assert f"{kiosks} kiosks: <strong>{offline}</strong> offline" in page
    assert kiosks == 60 and 0 < offline < 60


def test_each_channels_columns_add_up_to_its_total():
    from config.dashboard import by_channel

    call_command("seed_demo")
    rows = by_channel(timezone.now())
    assert rows and all(
        row["sent"] + row["failed"] + row["queued"] + row["other"] == row["total"] for row in rows
    )
    assert any(row["other"] for row in rows)  # the demo has expired and cancelled ones


def test_the_channel_table_counts_the_same_days_as_the_chart(admin_client):
    """The chart counts from midnight six days ago, the table counted the last 7 x 24 h:
    their totals disagreed by the deliveries of that first morning."""
    import time_machine

    from config.dashboard import dashboard

    now = timezone.now().replace(hour=15, minute=0)
    with time_machine.travel(now, tick=False):
        DeliveryFactory(created_at=now - timedelta(days=6, hours=10))  # in: 05:00, 6 days ago
        DeliveryFactory(created_at=now - timedelta(days=6, hours=20))  # out: 19:00 the day before
        DeliveryFactory(channel="sms", address="+14155550100", created_at=now)
        board = dashboard(now)

    assert board["week_total"] == 2
    assert sum(row["total"] for row in board["channels"]) == 2


def test_the_chart_and_the_table_count_the_same_days_in_another_time_zone(settings):
    import time_machine

    from config.dashboard import dashboard

    settings.TIME_ZONE = "Asia/Kolkata"
    now = timezone.now().replace(hour=20, minute=30)  # 02:00 the next day in Kolkata
    with time_machine.travel(now, tick=False):
        DeliveryFactory(created_at=now)
        DeliveryFactory(created_at=now - timedelta(days=6, hours=2))  # 00:00 IST: the first day
        DeliveryFactory(created_at=now - timedelta(days=6, hours=3))  # 23:00 IST the day before
        board = dashboard(now)

    assert board["week_total"] == 2
    assert sum(row["total"] for row in board["channels"]) == 2


def test_queued_deliveries_are_each_counted_once():
    """Frozen ones were counted under the kill switch and again under their own reason."""
    from config.dashboard import queued_reasons

    KillSwitch.objects.create(
        name="stop email", scope="channel", channel="email", is_on=True, reason="audit"
    )
    DeliveryFactory.create_batch(2, status_reason="cadence: daily limit — queued")
    DeliveryFactory(channel="sms", address="+14155550100", status_reason="cadence: cooldown")
    DeliveryFactory(channel="sms", address="+14155550101")

    reasons = dict(queued_reasons(timezone.now()))

    assert reasons == {
        "frozen by a kill switch": 2,
        "cadence": 1,
        "due or scheduled for later": 1,
    }
    assert sum(reasons.values()) == Delivery.objects.filter(status="scheduled").count()


def test_breaker_trips_count_a_closed_breaker_opening_not_failed_trials():
    from config.dashboard import dashboard
    from notifications.models import BreakerTransition, ProviderBreaker

    now = timezone.now()
    breaker = ProviderBreaker.objects.create(provider="email:recording", state="open")
    for from_state, to_state in [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),  # its trial call failed: the same outage
        ("open", "half_open"),
        ("half_open", "closed"),
        ("closed", "open"),
    ]:
        BreakerTransition.objects.create(
            breaker=breaker, at=now, from_state=from_state, to_state=to_state, reason="x"
        )
    assert dashboard(now)["breaker_trips"] == 2


@pytest.mark.django_db
def test_verify_checks_not_run_yet_are_not_called_passing(admin_client):
    """The dashboard said "All verify checks pass." while every check was pending."""
    from notifications.models import VerifyCheck

    now = timezone.now()
    VerifyCheck.objects.create(
        workflow_run=WorkflowRunFactory(),
        name="all_recipients_logged",
        due_at=now + timedelta(minutes=10),
        timeout_at=now + timedelta(hours=1),
    )
    page = admin_client.get("/admin/").content.decode()
    assert "All verify checks pass." not in page
    assert "None failing; 1 not run yet" in page
    VerifyCheck.objects.update(status="pass")
    assert "All verify checks pass." in admin_client.get("/admin/").content.decode()


def test_queued_deliveries_of_an_aborted_batch_or_behind_an_open_breaker_say_so():
    """They were listed under their last reason ("attempt 2/3 failed (recipient deferred",
    "due or scheduled for later") while they waited for a resume or a provider's trial."""
    from config.dashboard import queued_reasons
    from notifications.models import ProviderBreaker, WorkflowRun

    aborted = WorkflowRunFactory(status=WorkflowRun.Status.ABORTED)
    DeliveryFactory(
        workflow_run=aborted,
        status_reason="attempt 2/3 failed (recipient deferred: {'a@example.org': (451,",
    )
    DeliveryFactory(workflow_run=aborted)
    ProviderBreaker.objects.create(
        provider="sms:recording", state="open", opened_at=timezone.now(), consecutive_failures=5
    )
    DeliveryFactory(channel="sms", address="+14155550100")
    DeliveryFactory(channel="whatsapp", address="+14155550101")

    reasons = dict(queued_reasons(timezone.now()))

    assert reasons == {
        "their batch was halted: resume or cancel it": 2,
        "provider breaker sms:recording open": 1,
        "due or scheduled for later": 1,
    }


def _to_stakeholder(person, **fields):
    fields.setdefault("address", person.email)
    return DeliveryFactory(
        recipient_key=person.recipient_key,
        status_reason="cadence: daily limit on email (1/1 today) — deferred until tomorrow",
        send_at=timezone.now() + timedelta(hours=4),
        **fields,
    )


def test_queued_deliveries_a_stakeholder_can_no_longer_get_say_they_will_be_cancelled():
    """Queued for a stakeholder marked inactive (or deleted) since, they were counted under
    "cadence", the reason they were queued with, while the Deliveries list says each "will
    be cancelled when due" (holds.explain, before an open breaker); the dashboard says so too,
    and so does it for one whose stakeholder has no address left."""
    from config.dashboard import queued_reasons
    from notifications.breakers import breaker_key
    from notifications.dispatch import provider_of
    from notifications.models import ProviderBreaker
    from tests.cadence.factories import StakeholderFactory

    alice, bob, carol, dora = (StakeholderFactory(name=n) for n in ("A", "B", "C", "D"))
    _to_stakeholder(alice)
    _to_stakeholder(bob)
    _to_stakeholder(carol)
    _to_stakeholder(dora)
    alice.is_active = False
    alice.save()
    bob.delete()
    dora.email = dora.phone = ""
    dora.save()
    key = breaker_key("email", provider_of("email"))
    ProviderBreaker.objects.create(provider=key, state="open", opened_at=timezone.now())
    DeliveryFactory(recipient_key="customer:7")  # behind the breaker

    reasons = dict(queued_reasons(timezone.now()))

    assert reasons == {
        "will be cancelled when due: stakeholder inactive or deleted": 2,
        "will be cancelled when due: stakeholder has no address now": 1,
        f"provider breaker {key} open": 2,
    }


def test_queued_reasons_read_the_stakeholders_in_a_fixed_number_of_queries():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from config.dashboard import queued_reasons
    from tests.cadence.factories import StakeholderFactory

    def queries(n):
        for person in StakeholderFactory.create_batch(n):
            _to_stakeholder(person)
            _to_stakeholder(person, channel="sms", address=person.phone)
            person.is_active = False
            person.save()
        with CaptureQueriesContext(connection) as captured:
            reasons = dict(queued_reasons(timezone.now()))
        return len(captured), reasons

    few, reasons = queries(1)
    assert reasons == {"will be cancelled when due: stakeholder inactive or deleted": 2}
    many, reasons = queries(5)
    assert reasons == {"will be cancelled when due: stakeholder inactive or deleted": 12}
    assert many == few
