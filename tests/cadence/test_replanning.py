"""Loosening a cadence in the admin brings forward what the old, stricter one queued
(seed 003): due now when the new cadence allows it, else at the new allowed time; held
for anything else, it stays where it is. Driven through the admin and dispatch."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.contrib.messages import get_messages
from django.urls import reverse

from notifications import dispatch
from notifications.dispatch import ManualClock
from notifications.models import Delivery, DeliveryEvent, KillSwitch, RecordedMessage
from tests.cadence.factories import PersonaFactory, StakeholderFactory
from tests.notifications.factories import DeliveryFactory, WorkflowRunFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)  # a Monday
TOMORROW = datetime(2026, 11, 24, tzinfo=UTC)


@pytest.fixture(autouse=True)
def clock(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def manager():
    return PersonaFactory(
        name="Manager", cooldown_hours=0, max_per_day=1, max_per_week=0, max_alert_per_day=0
    )


def dispatch_due(now=NOW):
    return dispatch.dispatch_due(now=now, clock=ManualClock(now))


def to(person, *, status="scheduled", send_at=NOW, channel="email", **fields):
    return DeliveryFactory(
        recipient_key=person.recipient_key,
        channel=channel,
        address=person.address_for(channel),
        message_type="alert",
        status=status,
        send_at=send_at,
        sent_at=send_at if status == "sent" else None,
        **fields,
    )


def held_by_cadence(person, count=1):
    """`count` alerts the cadence held at send time (after one sent at 09:00)."""
    to(person, status="sent", send_at=NOW - timedelta(hours=3))
    held = [to(person) for _ in range(count)]
    assert dispatch_due().deferred == count
    for delivery in held:
        delivery.refresh_from_db()
        assert delivery.status_reason.startswith("cadence: ")
    return held


def persona_form(persona, **changes) -> dict:
    fields = (
        "name",
        "description",
        "cooldown_hours",
        "max_per_day",
        "max_per_week",
        "max_per_month",
        "max_report_per_day",
        "max_alert_per_day",
        "max_story_so_far_per_day",
        "max_custom_per_day",
    )
    return {**{f: getattr(persona, f) for f in fields}, **changes}


def save_persona(client, persona, **changes) -> list[str]:
    response = client.post(
        reverse("admin:cadence_persona_change", args=[persona.pk]),
        persona_form(persona, **changes),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_loosening_a_persona_brings_its_queued_delivery_forward_and_it_is_sent_once(
    admin_client, manager
):
    alice = StakeholderFactory(name="Alice", persona=manager)
    (held,) = held_by_cadence(alice)
    assert held.send_at == TOMORROW

    messages = save_persona(admin_client, manager, max_per_day=3)

    assert "1 delivery queued under the old cadence was re-planned by the new one." in messages
    held.refresh_from_db()
    assert (held.status, held.send_at) == ("scheduled", NOW)
    reason = (
        "re-planned: persona Manager's cadence was changed by admin; its cadence lets it go "
        "now (was queued until 2026-11-24 00:00 UTC)"
    )
    assert held.status_reason == reason
    event = held.events.get(kind=DeliveryEvent.Kind.REPLANNED)
    assert (event.at, event.reason) == (NOW, reason)
    # Sent now, once.
    assert dispatch_due().sent == 1
    assert dispatch_due().sent == 0
    assert RecordedMessage.objects.count() == 1
    held.refresh_from_db()
    assert held.status == "sent"


def test_what_the_new_cadence_still_holds_moves_to_its_new_time(admin_client, manager):
    alice = StakeholderFactory(name="Alice", persona=manager)
    first, second = held_by_cadence(alice, count=2)
    assert (first.send_at, second.send_at) == (TOMORROW, TOMORROW + timedelta(days=1))

    messages = save_persona(admin_client, manager, max_per_day=2)

    assert "2 deliveries queued under the old cadence were re-planned by the new one." in messages
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.send_at == NOW
    # Today has room for one more only: the second goes tomorrow rather than the day after.
    assert (second.send_at, second.status_reason) == (
        TOMORROW,
        "cadence: daily limit (2/2 today) — queued until 2026-11-24 00:00 UTC (re-planned: "
        "persona Manager's cadence was changed by admin; was queued until 2026-11-25 00:00 "
        "UTC)",
    )
    assert dispatch_due().sent == 1
    assert dispatch_due(now=TOMORROW).sent == 1


def test_tightening_moves_nothing_later(admin_client, manager):
    manager.max_per_day = 2
    manager.save()
    alice = StakeholderFactory(name="Alice", persona=manager)
    to(alice, status="sent", send_at=NOW - timedelta(hours=4))
    (held,) = held_by_cadence(alice)
    assert held.send_at == TOMORROW

    messages = save_persona(admin_client, manager, max_per_day=1, max_per_week=1)

    assert "No delivery queued under the old cadence could go sooner under the new one." in messages
    held.refresh_from_db()
    assert held.send_at == TOMORROW
    assert not held.events.filter(kind=DeliveryEvent.Kind.REPLANNED).exists()


def test_deliveries_held_for_other_reasons_stay_where_they_are(admin_client, manager):
    alice = StakeholderFactory(name="Alice", persona=manager)
    (held,) = held_by_cadence(alice)
    later = TOMORROW + timedelta(hours=6)
    paced = to(alice, send_at=later, status_reason="paced: sms:+15005550006 sends at most 1/s")
    fallback_wait = to(
        alice, send_at=later, status_reason="fallback for delivery 1: waiting for a read receipt"
    )
    someone_else = DeliveryFactory(send_at=later, status_reason=held.status_reason)

    messages = save_persona(admin_client, manager, max_per_day=10)

    assert "1 delivery queued under the old cadence was re-planned by the new one." in messages
    held.refresh_from_db()
    assert held.send_at == NOW
    for other in (paced, fallback_wait, someone_else):
        other.refresh_from_db()
        assert (other.status, other.send_at) == ("scheduled", later)


def test_deleting_the_persona_replans_by_the_seeds_defaults(admin_client):
    weekly = PersonaFactory(
        name="Weekly", cooldown_hours=0, max_per_day=1, max_per_week=1, max_alert_per_day=0
    )
    alice = StakeholderFactory(name="Alice", persona=weekly)
    (held,) = held_by_cadence(alice)
    assert held.send_at == datetime(2026, 11, 30, tzinfo=UTC)  # next Monday

    response = admin_client.post(
        reverse("admin:cadence_persona_delete", args=[weekly.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert "1 delivery queued under the old cadence was re-planned by the new one." in messages
    held.refresh_from_db()
    # The defaults: 1 a day, 2 a week: tomorrow.
    assert held.send_at == TOMORROW
    assert held.status_reason == (
        "cadence: daily limit (1/1 today) — queued until 2026-11-24 00:00 UTC (re-planned: "
        "persona Weekly deleted by admin; was queued until 2026-11-30 00:00 UTC)"
    )


def test_clearing_a_stakeholders_own_override_replans_by_the_persona(admin_client):
    alice = StakeholderFactory(
        name="Alice",
        persona=PersonaFactory(name="Manager", cooldown_hours=0, max_per_day=5),
        max_per_day=1,
    )
    (held,) = held_by_cadence(alice)
    assert held.send_at == TOMORROW
    form = {
        "name": alice.name,
        "email": alice.email,
        "phone": alice.phone,
        "is_active": "on",
        "persona": alice.persona_id,
        "preferred_channel": "email",
        "fallback_channel": "",
        "time_zone": "UTC",
        "max_per_day": "",
    }

    response = admin_client.post(reverse("admin:cadence_stakeholder_change", args=[alice.pk]), form)

    assert response.status_code == 302, response.content.decode()[:2000]
    messages = [str(m) for m in get_messages(response.wsgi_request)]
    assert "1 delivery queued under the old cadence was re-planned by the new one." in messages
    held.refresh_from_db()
    assert held.send_at == NOW
    assert held.status_reason.startswith("re-planned: Alice's cadence was changed by admin; ")
    assert dispatch_due().sent == 1
    assert Delivery.objects.filter(status="sent").count() == 2


def test_a_frozen_delivery_the_cadence_holds_goes_by_the_new_cadence_once_released(
    admin_client, manager
):
    """The kill switch holds it only while it is on; its send time is the cadence's. Left at
    the old cadence's time, it would wait until then after the switch is turned off."""
    alice = StakeholderFactory(name="Alice", persona=manager)
    (held,) = held_by_cadence(alice)
    switch = KillSwitch.objects.create(name="email off", scope="channel", channel="email")
    switch.is_on = True
    switch.save()

    messages = save_persona(admin_client, manager, max_per_day=3)

    assert "1 delivery queued under the old cadence was re-planned by the new one." in messages
    assert dispatch_due().sent == 0  # frozen meanwhile
    switch.is_on = False
    switch.save()
    assert dispatch_due().sent == 1
    held.refresh_from_db()
    assert held.status == "sent"


def test_a_halted_runs_delivery_the_cadence_holds_goes_by_the_new_cadence_once_resumed(
    admin_client, manager
):
    alice = StakeholderFactory(name="Alice", persona=manager)
    run = WorkflowRunFactory(status="running")
    to(alice, status="sent", send_at=NOW - timedelta(hours=3))
    held = to(alice, workflow_run=run)
    assert dispatch_due().deferred == 1
    run.status = "aborted"
    run.save()

    messages = save_persona(admin_client, manager, max_per_day=3)

    assert "1 delivery queued under the old cadence was re-planned by the new one." in messages
    assert dispatch_due().sent == 0  # halted meanwhile
    run.status = "running"
    run.save()
    assert dispatch_due().sent == 1
    held.refresh_from_db()
    assert held.status == "sent"
