"""The Deliveries admin's "why not sent yet / when" column on stakeholder deliveries: what
happens when they come due is decided by who the stakeholder is now (inactive, deleted,
reached at another address), and the column says so before then, without a query per row."""

import html
import re
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from notifications import dispatch
from notifications.dispatch import ManualClock
from notifications.models import Delivery
from tests.cadence.factories import PersonaFactory, StakeholderFactory
from tests.notifications.factories import DeliveryFactory
from tests.triggers.helpers import at

pytestmark = pytest.mark.django_db

NOW = at(12)
DUE = at(0, day=1)
HELD = "cadence: daily limit (1/1 today) — queued until 2026-11-24 00:00 UTC"


@pytest.fixture(autouse=True)
def clock(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"
    with time_machine.travel(NOW, tick=False):
        yield


def queued_for(person, **fields):
    """An alert the cadence queued for tomorrow, as the evaluator leaves it."""
    return DeliveryFactory(
        **{
            "recipient_key": person.recipient_key,
            "channel": "email",
            "address": person.email,
            "message_type": "alert",
            "send_at": DUE,
            "status_reason": HELD,
            **fields,
        }
    )


def why_column(page: str) -> dict[int, str]:
    rows = re.findall(
        r'/delivery/(\d+)/change/.*?<td class="field-why_and_when">(.*?)</td>', page, re.S
    )
    return {int(pk): html.unescape(text) for pk, text in rows}


def deliveries_page(client) -> dict[int, str]:
    response = client.get(reverse("admin:notifications_delivery_changelist"))
    assert response.status_code == 200
    return why_column(response.content.decode())


def test_the_column_says_what_will_happen_when_due_and_dispatch_then_does_it(admin_client):
    persona = PersonaFactory(name="Manager", cooldown_hours=0, max_per_day=5)
    alice = StakeholderFactory(name="Alice", persona=persona)
    bob = StakeholderFactory(name="Bob", email="bob@sites.example.org", persona=persona)
    carol = StakeholderFactory(name="Carol", persona=persona)
    dave = StakeholderFactory(name="Dave", persona=persona)
    for_alice, for_bob, for_carol, for_dave = (queued_for(p) for p in (alice, bob, carol, dave))
    alice.is_active = False
    alice.save()
    bob.email = "bob.new@sites.example.org"
    bob.save()
    carol_id = carol.pk
    carol.delete()

    why = deliveries_page(admin_client)

    expected = f" — expected {DUE:%Y-%m-%d %H:%M:%S}"
    assert why[for_alice.pk] == (
        "will be cancelled when due (Alice was marked inactive before it could be sent)" + expected
    )
    assert why[for_carol.pk] == (
        f"will be cancelled when due (stakeholder {carol_id} was deleted before it could be "
        "sent)" + expected
    )
    assert why[for_bob.pk] == (
        f"{HELD}; will go to the corrected address when due (Bob's address changed after it "
        "was queued (email bob@sites.example.org → bob.new@sites.example.org))" + expected
    )
    assert why[for_dave.pk] == HELD + expected

    # And it is what dispatch does when they come due (a re-addressed one is put back for
    # the next round, which checks its new address).
    for round_at in (DUE, DUE + timedelta(minutes=1)):
        dispatch.dispatch_due(now=round_at, clock=ManualClock(round_at))
    for delivery in (for_alice, for_bob, for_carol, for_dave):
        delivery.refresh_from_db()
    assert (for_alice.status, for_carol.status, for_dave.status) == (
        "cancelled",
        "cancelled",
        "sent",
    )
    assert (for_bob.status, for_bob.address) == ("sent", "bob.new@sites.example.org")


def test_a_frozen_delivery_says_what_follows_its_release(admin_client):
    from notifications.models import KillSwitch

    alice = StakeholderFactory(name="Alice")
    held = queued_for(alice)
    alice.is_active = False
    alice.save()
    KillSwitch.objects.create(name="email off", scope="channel", channel="email", is_on=True)

    assert deliveries_page(admin_client)[held.pk] == (
        "frozen by kill switch email off; then it will be cancelled when due (Alice was "
        "marked inactive before it could be sent) — waits for a person"
    )


def test_the_page_reads_the_stakeholders_in_one_query_whatever_their_number(admin_client):
    def page_of(count: int) -> int:
        Delivery.objects.all().delete()
        people = StakeholderFactory.create_batch(count)
        for person in people:
            queued_for(person)
        for person in people[::2]:
            person.is_active = False
            person.save()
        for person in people[1::2]:
            person.email = f"new.{person.email}"
            person.save()
        with CaptureQueriesContext(connection) as queries:
            why = deliveries_page(admin_client)
        assert len(why) == count
        assert (
            sum("will be cancelled when due" in text for text in why.values()) == (count + 1) // 2
        )
        assert sum("corrected address" in text for text in why.values()) == count // 2
        return len(queries)

    assert page_of(2) == page_of(20)


def test_the_delivery_page_says_it_too(admin_client):
    alice = StakeholderFactory(name="Alice")
    held = queued_for(alice, send_at=NOW + timedelta(hours=2))
    alice.is_active = False
    alice.save()
    page = admin_client.get(
        reverse("admin:notifications_delivery_change", args=[held.pk])
    ).content.decode()
    assert "will be cancelled when due (Alice was marked inactive before it could be sent)" in (
        html.unescape(page)
    )


def test_a_delivery_to_a_suppressed_email_with_a_fallback_says_it_goes_by_the_fallback(
    admin_client,
):
    """Alice's email bounced: her queued alert was said to "will be skipped: Hard bounce"
    (waiting for a person), while dispatch sends it by SMS, her fallback, when it comes
    due."""
    from notifications import tracking

    alice = StakeholderFactory(name="Alice", fallback_channel="sms")
    held = queued_for(alice, fallback_channel="sms", fallback_address=alice.phone)
    tracking.suppress(
        address=alice.email, channel="email", reason="bounce", source="test", by="test", now=NOW
    )

    assert deliveries_page(admin_client)[held.pk] == (
        f"its address is suppressed (Hard bounce): will go by sms to {alice.phone} when due"
        f" — expected {DUE:%Y-%m-%d %H:%M:%S}"
    )

    dispatch.dispatch_due(now=DUE, clock=ManualClock(DUE))
    held.refresh_from_db()
    assert held.status == "skipped"
    assert list(held.fallbacks.values_list("channel", "address", "status")) == [
        ("sms", alice.phone, "sent")
    ]
