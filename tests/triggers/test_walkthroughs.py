"""Seed 003's walkthroughs, step by step, with the clock moved (time-machine) and the doors
the system uses: the beat task `herald.evaluate_triggers` and the dispatcher."""

import pytest
import time_machine

from cadence.models import TriggerCooldown
from notifications.models import Delivery, Notification, RecordedMessage
from tests.cadence.factories import PersonaFactory, StakeholderFactory
from tests.kiosks.factories import MoraleResponseFactory
from tests.triggers.helpers import (
    at,
    deliveries_of,
    dispatch_now,
    kiosk,
    minute,
    project,
    reports,
    template,
    tick,
    trigger_workflow,
)

pytestmark = pytest.mark.django_db

NOT_CHARGING_123 = "kiosk_health_status:123:45:NOT_CHARGING"
LOW_BATTERY_123 = "kiosk_health_status:123:45:LOW_BATTERY"
LOW_BATTERY_456 = "kiosk_health_status:456:45:LOW_BATTERY"


@pytest.fixture(autouse=True)
def recording_backends(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"


@pytest.mark.parametrize("grouping", [False, True], ids=["seed default", "grouping on"])
def test_real_world_scenario_two_managers_and_kiosk_123(grouping):
    with time_machine.travel(at(10), tick=False) as clock:
        # Setup: "Kiosk Health Alert" on kiosk_health_status for persona Manager (2 h).
        manager = PersonaFactory(
            name="Manager", cooldown_hours=2, max_per_day=5, max_per_week=20, max_per_month=80
        )
        alice = StakeholderFactory(name="Alice", persona=manager)
        bob = StakeholderFactory(name="Bob", persona=manager)
        digest = template(
            "Kiosk digest",
            subject="{{ count }} kiosk issues",
            body="{% for s in summaries %}{{ s }}\n{% endfor %}",
            variables=["count", "summaries"],
        )
        trigger_workflow(
            personas=[manager],
            group_contexts=grouping,
            grouped_template=digest if grouping else None,
        )
        site = project(45, "Hudson Yards")
        k123, k456 = kiosk(123, site), kiosk(456, site)

        # 10:00 — first detection: Kiosk #123 NOT_CHARGING. Both layers pass; sent.
        reports(k123, charging=False)
        assert tick()["contexts_fired"] == 1
        dispatch_now()
        for person in (alice, bob):
            (delivery,) = deliveries_of(person)
            assert (delivery.context_key, delivery.status) == (NOT_CHARGING_123, "sent")
        assert TriggerCooldown.objects.get(context_key=NOT_CHARGING_123).last_sent_at == at(10)

        # 10:05 — charging fixed, battery low: a new context passes Layer 1, but each
        # Manager got an email 5 minutes ago, so Layer 2 queues it for 12:00.
        clock.move_to(at(10, 5))
        reports(k123, charging=True, battery_level=15)
        reports(k456)
        report = tick()
        assert (report["contexts_fired"], report["deliveries_queued"]) == (1, 2)
        for person in (alice, bob):
            queued = deliveries_of(person, context_key=LOW_BATTERY_123).get()
            assert (queued.status, minute(queued.send_at)) == ("scheduled", at(12))
            assert queued.status_reason == (
                "cadence: cooldown (2 h after the message at 2026-11-23 10:00 UTC) — queued until "
                "2026-11-23 12:00 UTC"
            )
        assert dispatch_now().sent == 0

        # 10:10 — Kiosk #123 unplugged again (the same context as 10:00), within Layer 1's
        # 2 hours: no deliveries.
        clock.move_to(at(10, 10))
        reports(k123, charging=False, battery_level=50)
        reports(k456)
        before = Delivery.objects.count()
        report = tick()
        assert (report["contexts_fired"], report["contexts_skipped_cooldown"]) == (0, 1)
        assert Delivery.objects.count() == before

        # 12:00 — #123 still NOT_CHARGING, #456 has LOW_BATTERY. The 10:05 alert about #123's
        # battery is due, but the battery recovered: the minute sweep cancels it as resolved
        # instead of sending it late.
        clock.move_to(at(12, second=30))
        reports(k123, charging=False, battery_level=50)
        reports(k456, battery_level=15)
        assert dispatch_now().cancelled == 2
        for person in (alice, bob):
            stale = deliveries_of(person, context_key=LOW_BATTERY_123).get()
            assert stale.status == "cancelled"
            assert stale.status_reason.startswith("resolved")
        # Both contexts pass Layer 1 (2 h since 10:00; #456 never sent).
        report = tick()
        assert (report["contexts_fired"], report["contexts_skipped_cooldown"]) == (2, 0)
        if grouping:
            # One message per Manager listing both kiosks, now.
            assert (report["deliveries_now"], report["deliveries_queued"]) == (2, 0)
            grouped = Notification.objects.get(origin__startswith="2 contexts")
            for person in (alice, bob):
                delivery = deliveries_of(person, send_at=at(12, second=30)).get()
                assert delivery.notification == grouped
                assert delivery.status == "scheduled"
                assert "Kiosk #123 at Hudson Yards: NOT_CHARGING" in delivery.body
                assert "Kiosk #456 at Hudson Yards: LOW_BATTERY" in delivery.body
        else:
            # One Notification per context; each Manager gets one now and the other at its
            # true time, when the 2 h cooldown allows (14:00) — never two at 12:00.
            assert (
                Notification.objects.filter(origin__startswith="kiosk_health_status").count() == 4
            )
            assert (report["deliveries_now"], report["deliveries_queued"]) == (2, 2)
            for person in (alice, bob):
                times = {
                    d.context_key: minute(d.send_at)
                    for d in deliveries_of(
                        person, context_key__in=[NOT_CHARGING_123, LOW_BATTERY_456]
                    )
                    if d.status == "scheduled"
                }
                assert times == {NOT_CHARGING_123: at(12), LOW_BATTERY_456: at(14)}
        assert dispatch_now().sent == 2

        # 12:05 — too soon again: Layer 1 blocks both contexts.
        clock.move_to(at(12, 5))
        reports(k123, charging=False, battery_level=50)
        reports(k456, battery_level=15)
        report = tick()
        assert (report["contexts_fired"], report["contexts_skipped_cooldown"]) == (0, 2)

        # The queued ones go at their time (within the minute's sweeps); nobody ever got two
        # messages within 2 hours.
        clock.move_to(at(14, 1))
        reports(k456, battery_level=15)
        dispatch_now()
        for person in (alice, bob):
            sent = list(deliveries_of(person, status="sent").values_list("sent_at", flat=True))
            gaps = [later - earlier for earlier, later in zip(sent, sent[1:], strict=False)]
            assert all(gap.total_seconds() >= 2 * 3600 for gap in gaps)
            sent = [minute(s) for s in sent]
            assert sent[:2] == [at(10), at(12)]
            assert len(sent) == (2 if grouping else 3)


def test_cadence_rules_in_action_alice_the_manager():
    """Cooldown 2 h, 5 a day, 3 alerts a day: 10:00 sent, 10:30 queued to 12:00, 12:00 sent,
    12:05 queued to 14:00."""
    with time_machine.travel(at(10), tick=False) as clock:
        manager = PersonaFactory(
            name="Manager",
            cooldown_hours=2,
            max_per_day=5,
            max_per_week=20,
            max_alert_per_day=3,
        )
        alice = StakeholderFactory(name="Alice", persona=manager)
        trigger_workflow(name="Kiosk health", personas=[manager])
        trigger_workflow(name="Morale", events=("morale_drop_baseline",), personas=[manager])
        site = project(45, "Hudson Yards")
        k123, k456 = kiosk(123, site), kiosk(456, site)
        for day in range(1, 8):  # a content baseline of 4.5
            MoraleResponseFactory.create_batch(
                2, project=site, score=5, submitted_at=at(9, day=-day)
            )
            MoraleResponseFactory(project=site, score=4, submitted_at=at(8, day=-day))

        # 10:00 — kiosk health alert: no previous email, 0/5, 0/3 alerts. Sent.
        reports(k123, charging=False)
        assert tick()["deliveries_now"] == 1
        dispatch_now()
        assert deliveries_of(alice).get().status == "sent"

        # 10:30 — morale drop alert from another workflow: cooldown blocks (30 minutes
        # since 10:00, need 2 hours); daily 1/5 and alerts 1/3 would pass. Queued to 12:00.
        clock.move_to(at(10, 30))
        reports(k123, charging=False)
        reports(k456)
        MoraleResponseFactory.create_batch(4, project=site, score=2, submitted_at=at(10, 20))
        report = tick()
        assert (report["contexts_fired"], report["deliveries_queued"]) == (1, 1)
        morale = deliveries_of(alice, context_key="morale_drop_baseline:45").get()
        assert (morale.send_at, morale.status) == (at(12), "scheduled")
        assert morale.status_reason.startswith("cadence: cooldown")

        # 12:00 — the queued email goes: cooldown passed, 1/5 → 2/5, alerts 1/3 → 2/3.
        clock.move_to(at(12))
        reports(k123)  # fixed meanwhile
        reports(k456)
        assert dispatch_now().sent == 1
        morale.refresh_from_db()
        assert (morale.status, morale.sent_at) == ("sent", at(12))

        # 12:05 — another kiosk health alert: 5 minutes after 12:00. Queued to 14:00.
        clock.move_to(at(12, 5))
        reports(k123)
        reports(k456, battery_level=10)
        report = tick()
        assert (report["contexts_fired"], report["deliveries_queued"]) == (1, 1)
        third = deliveries_of(alice, context_key=LOW_BATTERY_456).get()
        assert (third.send_at, third.status) == (at(14), "scheduled")
        assert "queued until 2026-11-23 14:00 UTC" in third.status_reason


def test_multiple_trigger_events_in_one_workflow_each_has_its_own_rate_limit():
    """The seed's summary table. One workflow on three events, Layer 1 default 1 hour; the
    on-call persona has no Layer 2 cooldown, so every fire is sent at once."""
    with time_machine.travel(at(10), tick=False) as clock:
        on_call = PersonaFactory(name="On call", cooldown_hours=0, max_per_day=10, max_per_week=0)
        person = StakeholderFactory(persona=on_call)
        trigger_workflow(
            name="Site watch",
            events=("kiosk_offline", "morale_drop_baseline", "kiosk_health_status"),
            personas=[on_call],
            # kiosk_offline announces OFFLINE; health status watches the other issues.
            event_options={
                "kiosk_health_status": {
                    "watched_issues": ["NOT_CHARGING", "SCREEN_OFF", "LOW_BATTERY"]
                }
            },
        )
        site = project(45)
        k123 = kiosk(123, site, last_heartbeat_at=at(9, 50))
        for day in range(1, 8):
            MoraleResponseFactory.create_batch(
                3, project=site, score=5, submitted_at=at(9, day=-day)
            )

        def last_sent(event):
            rows = TriggerCooldown.objects.filter(event=event)
            return max((r.last_sent_at for r in rows), default=None)

        table = []

        def row(time, event):
            report = tick()
            table.append((time, event, report["contexts_fired"], report["deliveries_now"]))
            # one workflow: every context found is fired, held by its cooldown, or not watched
            assert report["contexts_found"] == (
                report["contexts_fired"]
                + report["contexts_skipped_cooldown"]
                + report["contexts_not_watched"]
                + report["contexts_without_audience"]
            ), report

        # 10:00 — Kiosk #123 offline (no heartbeat since 09:50).
        row("10:00", "kiosk_offline")
        assert (last_sent("kiosk_offline"), last_sent("morale_drop_baseline")) == (at(10), None)
        assert last_sent("kiosk_health_status") is None

        # 10:05 — morale dropped (kiosk_offline is still within its own hour).
        clock.move_to(at(10, 5))
        MoraleResponseFactory.create_batch(3, project=site, score=1, submitted_at=at(10))
        row("10:05", "morale_drop_baseline")
        assert last_sent("morale_drop_baseline") == at(10, 5)

        # 10:10 — Kiosk #123 is back but NOT_CHARGING: health status fires for the first time.
        clock.move_to(at(10, 10))
        reports(k123, charging=False)
        row("10:10", "kiosk_health_status")
        assert last_sent("kiosk_health_status") == at(10, 10)

        # 10:15 — detected again: blocked, 5 minutes < 1 hour.
        clock.move_to(at(10, 15))
        reports(k123, charging=False)
        row("10:15", "kiosk_health_status")

        # 11:10 — an hour after 10:10: passes again (morale has recovered meanwhile).
        MoraleResponseFactory.create_batch(9, project=site, score=5, submitted_at=at(10, 30))
        clock.move_to(at(11, 10))
        reports(k123, charging=False)
        row("11:10", "kiosk_health_status")
        assert last_sent("kiosk_health_status") == at(11, 10)

    assert table == [
        ("10:00", "kiosk_offline", 1, 1),
        ("10:05", "morale_drop_baseline", 1, 1),
        ("10:10", "kiosk_health_status", 1, 1),
        ("10:15", "kiosk_health_status", 0, 0),
        ("11:10", "kiosk_health_status", 1, 1),
    ]
    assert deliveries_of(person).count() == 4
    assert set(TriggerCooldown.objects.values_list("event", flat=True)) == {
        "kiosk_offline",
        "morale_drop_baseline",
        "kiosk_health_status",
    }


def test_send_time_safety_check_falls_back_to_sms():
    """Rules changed after the deliveries were created: at send time the email limit is hit,
    so the first goes by SMS; the second would break the SMS limit too, so it waits for the
    next day rather than break a rule (the seed would have sent both)."""
    with time_machine.travel(at(10), tick=False) as clock:
        persona = PersonaFactory(
            name="Manager", cooldown_hours=0, max_per_day=5, max_per_week=0, max_alert_per_day=5
        )
        alice = StakeholderFactory(
            name="Alice", persona=persona, phone="+14155550100", fallback_channel="sms"
        )
        trigger_workflow(personas=[persona])
        site = project(45)
        k123, k456 = kiosk(123, site), kiosk(456, site)

        # 10:00: delivery created, limits allow it (the worker is down: not sent yet).
        reports(k123, charging=False)
        assert tick()["deliveries_now"] == 1
        # 10:30: another one, still allowed at creation.
        clock.move_to(at(10, 30))
        reports(k123, charging=False)
        reports(k456, battery_level=10)
        assert tick()["deliveries_now"] == 1
        # An email at 09:00 had gone, and now the persona allows one email a day.
        first, second = deliveries_of(alice, channel="email")
        first.notification.deliveries.create(
            recipient_key=alice.recipient_key,
            channel="email",
            address=alice.email,
            message_type="alert",
            idempotency_key="earlier:alice",
            send_at=at(9),
            sent_at=at(9),
            status="sent",
        )
        persona.max_per_day = 1
        persona.save()

        # 10:30: the worker is back; both attempt to send.
        report = dispatch_now()

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == "skipped"
    assert first.status_reason == ("cadence: daily limit on email (1/1 today): sent by sms instead")
    fallback = first.fallbacks.get()
    assert (fallback.channel, fallback.address, fallback.status) == ("sms", alice.phone, "sent")
    assert RecordedMessage.objects.filter(channel="sms", to=alice.phone).count() == 1
    assert second.status == "scheduled"
    assert second.send_at == at(0, day=1)
    assert second.status_reason == (
        "cadence: daily limit on email (1/1 today) — deferred until 2026-11-24 00:00 UTC; "
        "sms is held too (daily limit)"
    )
    assert report.sent == 1
    assert not RecordedMessage.objects.filter(channel="email").exists()
