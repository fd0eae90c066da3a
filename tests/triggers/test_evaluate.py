"""The evaluator loop: Layer 1 cooldown sources and claims, audiences, Layer 2 with
overrides, grouping, resolved notices, recovery at send time, and its doors."""

import json
import multiprocessing
import threading
from datetime import timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from cadence.models import TriggerCooldown
from kiosks.models import Kiosk
from notifications.models import Delivery, Notification, WorkflowRun
from notifications.triggers import evaluate_triggers, tick_summary
from tests.cadence.factories import PersonaFactory, StakeholderFactory
from tests.notifications.factories import DeliveryFactory
from tests.triggers.helpers import (
    at,
    deliveries_of,
    dispatch_now,
    kiosk,
    project,
    reports,
    template,
    tick,
    trigger_workflow,
)

pytestmark = pytest.mark.django_db

T = at(10)


@pytest.fixture(autouse=True)
def recording_backends(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"


@pytest.fixture
def clock():
    with time_machine.travel(T, tick=False) as traveller:
        yield traveller


def relaxed(**fields):
    """A persona that lets everything through at once, so a test sees Layer 1 alone."""
    return PersonaFactory(
        **{
            "cooldown_hours": 0,
            "max_per_day": 0,
            "max_per_week": 0,
            "max_per_month": 0,
            "max_alert_per_day": 0,
            **fields,
        }
    )


def unhealthy(site, pk, **state):
    return kiosk(pk, site, **({"charging": False} | state))


# --- Layer 1 --------------------------------------------------------------------------------


def test_layer1_cooldown_defaults_to_one_hour_without_personas_cooldown(clock):
    persona = relaxed(name="No cooldown")
    StakeholderFactory(persona=persona)
    trigger_workflow(personas=[persona])
    k = unhealthy(project(45), 123)
    assert tick()["contexts_fired"] == 1
    clock.move_to(T + timedelta(minutes=59))
    reports(k, charging=False)
    assert tick()["contexts_skipped_cooldown"] == 1
    clock.move_to(T + timedelta(hours=1))
    reports(k, charging=False)
    assert tick()["contexts_fired"] == 1


def test_layer1_cooldown_is_the_shortest_of_the_audiences_personas(clock):
    slow, fast = relaxed(name="Slow", cooldown_hours=4), relaxed(name="Fast", cooldown_hours=2)
    StakeholderFactory(persona=slow)
    StakeholderFactory(persona=fast)
    trigger_workflow(personas=[slow, fast])
    k = unhealthy(project(45), 123)
    tick()
    clock.move_to(T + timedelta(hours=2))
    reports(k, charging=False)
    assert tick()["contexts_fired"] == 1


def test_the_workflows_cooldown_wins_over_the_personas(clock):
    persona = relaxed(name="Manager", cooldown_hours=2)
    StakeholderFactory(persona=persona)
    trigger_workflow(personas=[persona], cooldown_hours=0.5)
    k = unhealthy(project(45), 123)
    tick()
    clock.move_to(T + timedelta(minutes=30))
    reports(k, charging=False)
    assert tick()["contexts_fired"] == 1


def test_per_event_and_per_issue_cooldowns(clock):
    """Seed Q2 ("not supported") made possible: OFFLINE re-announced after 15 minutes,
    other health issues after the event's 3 hours."""
    persona = relaxed(name="On call")
    StakeholderFactory(persona=persona)
    trigger_workflow(
        personas=[persona],
        cooldown_hours=1,
        event_options={
            "kiosk_health_status": {"cooldown_hours": 3, "issue_cooldown_hours": {"OFFLINE": 0.25}}
        },
    )
    site = project(45)
    quiet = unhealthy(site, 1, charging=True, last_heartbeat_at=T - timedelta(minutes=30))
    battery = unhealthy(site, 2, charging=True, battery_level=5)
    assert tick()["contexts_fired"] == 2
    clock.move_to(T + timedelta(minutes=15))
    reports(battery, battery_level=5)
    report = tick()
    assert (report["contexts_fired"], report["contexts_skipped_cooldown"]) == (1, 1)
    assert TriggerCooldown.objects.get(context_key__endswith=":OFFLINE").fire_count == 2
    # The workflow's 1 hour does not apply: the event's 3 hours do.
    battery_key = "kiosk_health_status:2:45:LOW_BATTERY"
    for hours, fires in ((2, 1), (3, 2)):
        clock.move_to(T + timedelta(hours=hours))
        reports(battery, battery_level=5)
        tick()
        assert TriggerCooldown.objects.get(context_key=battery_key).fire_count == fires
    assert quiet.pk == 1


def test_two_kiosks_never_share_a_cooldown(clock):
    persona = relaxed(name="On call")
    StakeholderFactory(persona=persona)
    trigger_workflow(personas=[persona], events=("kiosk_offline",))
    site = project(45)
    kiosk(1, site, connection_status=False)
    assert tick()["contexts_fired"] == 1
    clock.move_to(T + timedelta(minutes=5))
    kiosk(2, site, connection_status=False)
    report = tick()
    assert (report["contexts_fired"], report["contexts_skipped_cooldown"]) == (1, 1)
    assert set(TriggerCooldown.objects.values_list("context_key", flat=True)) == {
        "kiosk_offline:1:45",
        "kiosk_offline:2:45",
    }


def test_two_workflows_on_one_context_each_have_their_cooldown(clock):
    persona = relaxed(name="On call")
    StakeholderFactory(persona=persona)
    trigger_workflow(name="A", personas=[persona])
    trigger_workflow(name="B", personas=[persona])
    unhealthy(project(45), 123)
    assert tick()["contexts_fired"] == 2
    assert TriggerCooldown.objects.count() == 2


def _race_world():
    persona = relaxed(name="On call")
    StakeholderFactory.create_batch(3, persona=persona)
    trigger_workflow(personas=[persona])
    site = project(45)
    for pk in range(1, 6):
        kiosk(pk, site, charging=False, last_heartbeat_at=T)


def _assert_each_context_fired_once():
    assert TriggerCooldown.objects.count() == 5
    assert set(TriggerCooldown.objects.values_list("fire_count", flat=True)) == {1}
    assert Notification.objects.count() == 5
    assert Delivery.objects.count() == 15
    assert WorkflowRun.objects.count() == 1


def _tick_in_thread(barrier, results):
    try:
        barrier.wait()
        results.append(evaluate_triggers(now=T))
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_two_overlapping_ticks_in_threads_fire_each_context_once():
    _race_world()
    barrier, results = threading.Barrier(2), []
    threads = [threading.Thread(target=_tick_in_thread, args=(barrier, results)) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r["contexts_fired"] for r in results) == [0, 5]
    _assert_each_context_fired_once()


def _tick_in_process(barrier):
    connections.close_all()
    barrier.wait()
    evaluate_triggers(now=T)
    connections.close_all()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_four_overlapping_ticks_in_processes_on_postgresql_fire_each_context_once():
    _race_world()
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_tick_in_process, args=(barrier,)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    _assert_each_context_fired_once()


# --- audiences and Layer 2 --------------------------------------------------------------------


def test_project_driven_recipients_hear_about_their_projects_kiosks_only(clock):
    hudson, battery = project(45, "Hudson Yards"), project(46, "Battery Park")
    ann, ben = StakeholderFactory(name="Ann"), StakeholderFactory(name="Ben")
    hudson.stakeholders.add(ann)
    battery.stakeholders.add(ben)
    trigger_workflow(include_project_stakeholders=True)
    unhealthy(hudson, 123)
    tick()
    assert deliveries_of(ann).count() == 1
    assert not deliveries_of(ben).exists()
    assert deliveries_of(ann).get().recipient_key == f"stakeholder:{ann.pk}"


def test_a_stakeholders_override_is_enforced(clock):
    """The seed saves overrides but ignores them; here Alice's 1/day holds her second alert
    while Bob, same persona, gets his."""
    manager = relaxed(name="Manager", max_per_day=5)
    alice = StakeholderFactory(name="Alice", persona=manager, max_per_day=1)
    bob = StakeholderFactory(name="Bob", persona=manager)
    trigger_workflow(personas=[manager])
    site = project(45)
    unhealthy(site, 1)
    tick()
    clock.move_to(T + timedelta(minutes=5))
    unhealthy(site, 2)
    report = tick()
    assert (report["deliveries_now"], report["deliveries_queued"]) == (1, 1)
    held = deliveries_of(alice, context_key__startswith="kiosk_health_status:2:").get()
    assert held.send_at == at(0, day=1)
    assert held.status_reason.startswith("cadence: daily limit (1/1 today)")
    assert deliveries_of(bob, context_key__startswith="kiosk_health_status:2:").get().send_at == (
        T + timedelta(minutes=5)
    )


def test_cadence_days_are_the_stakeholders_days(clock):
    """At 20:00 UTC it is already tomorrow in Kolkata: the daily cap has reset there."""
    persona = relaxed(name="Manager", max_per_day=1)
    london = StakeholderFactory(name="Lon", persona=persona, time_zone="Europe/London")
    kolkata = StakeholderFactory(name="Kol", persona=persona, time_zone="Asia/Kolkata")
    trigger_workflow(personas=[persona], cooldown_hours=24)
    site = project(45)
    first = unhealthy(site, 1)
    tick()
    clock.move_to(at(20))
    reports(first, charging=False)
    unhealthy(site, 2)
    assert tick()["contexts_fired"] == 1
    second = {"context_key__startswith": "kiosk_health_status:2:"}
    assert deliveries_of(kolkata, **second).get().send_at == at(20)
    assert deliveries_of(london, **second).get().send_at == at(0, day=1)


def test_a_stakeholder_without_an_address_for_any_channel_is_counted(clock):
    persona = relaxed(name="Manager")
    StakeholderFactory(persona=persona, email="", phone="")
    reachable = StakeholderFactory(persona=persona)
    trigger_workflow(personas=[persona])
    unhealthy(project(45), 1)
    report = tick()
    assert report["recipients_without_address"] == 1
    assert Delivery.objects.get().recipient_key == reachable.recipient_key


def test_sms_only_stakeholder_is_reached_on_their_fallback_channel(clock):
    persona = relaxed(name="Manager")
    person = StakeholderFactory(persona=persona, email="", fallback_channel="sms")
    trigger_workflow(personas=[persona])
    unhealthy(project(45), 1)
    tick()
    delivery = deliveries_of(person).get()
    assert (delivery.channel, delivery.address) == ("sms", person.phone)


def test_a_whatsapp_person_hears_an_email_only_template_on_their_fallback(clock):
    """WhatsApp sends approved templates only: a template without a WhatsApp template name
    went out on WhatsApp and failed ("no template"), its fallback never used."""
    persona = relaxed(name="Manager")
    person = StakeholderFactory(
        persona=persona, preferred_channel="whatsapp", fallback_channel="email"
    )
    trigger_workflow(personas=[persona], channel="")
    unhealthy(project(45), 1)
    tick()
    delivery = deliveries_of(person).get()
    assert (delivery.channel, delivery.address) == ("email", person.email)
    assert delivery.fallback_channel == ""


def test_a_whatsapp_person_without_a_fallback_is_counted_not_sent_a_failing_message(clock):
    persona = relaxed(name="Manager")
    StakeholderFactory(persona=persona, preferred_channel="whatsapp")
    trigger_workflow(personas=[persona], channel="")
    unhealthy(project(45), 1)
    report = tick()
    assert not Delivery.objects.exists()
    assert report["recipients_without_address"] == 1
    assert tick_summary(report).endswith(
        " 1 recipient(s) not told: no address on a channel the template can go by "
        "(WhatsApp needs a WhatsApp template name)."
    )


def test_every_delivery_carries_its_context_type_and_fallback(clock):
    persona = relaxed(name="Manager")
    person = StakeholderFactory(persona=persona, fallback_channel="sms")
    trigger_workflow(personas=[persona], message_type="alert")
    unhealthy(project(45), 123, battery_level=10)
    tick()
    delivery = deliveries_of(person).get()
    assert delivery.context_key == "kiosk_health_status:123:45:LOW_BATTERY,NOT_CHARGING"
    assert (delivery.message_type, delivery.channel) == ("alert", "email")
    assert (delivery.fallback_channel, delivery.fallback_address) == ("sms", person.phone)
    assert "LOW_BATTERY, NOT_CHARGING" in delivery.subject
    assert delivery.workflow_run.workflow.name == "Kiosk Health Alert"


def _a_second_alert_the_daily_limit_holds(clock, **person):
    """One alert a day, a workflow whose alerts expire after 2 h: a first alert, then a
    second five minutes later. The person and the second tick's report."""
    persona = relaxed(name="Manager", max_per_day=1)
    person = StakeholderFactory(persona=persona, **person)
    trigger_workflow(personas=[persona], expires_after_hours=2)
    site = project(45)
    unhealthy(site, 1)
    tick()
    unhealthy(site, 2)
    clock.move_to(T + timedelta(minutes=5))
    return person, tick()


def test_a_queued_delivery_past_the_workflows_expiry_is_recorded_expired(clock):
    person, report = _a_second_alert_the_daily_limit_holds(clock)
    assert report["deliveries_expired"] == 1
    expired = deliveries_of(person, status="expired").get()
    assert expired.status_reason.startswith("expired: cadence: daily limit")


def test_a_delivery_held_past_its_expiry_goes_now_on_its_fallback_channel(clock):
    person, report = _a_second_alert_the_daily_limit_holds(clock, fallback_channel="sms")

    assert (report["deliveries_expired"], report["deliveries_now"]) == (0, 1)
    second = deliveries_of(person).get(context_key__contains=":2:")
    assert (second.status, second.channel, second.address) == ("scheduled", "sms", person.phone)
    assert (second.fallback_channel, second.fallback_address) == ("", "")
    assert second.send_at == T + timedelta(minutes=5)
    assert second.status_reason.startswith(
        "on its fallback channel: email is held (cadence: daily limit"
    )
    assert dispatch_now().sent == 2  # the first by email; the send-time re-check lets it go
    second.refresh_from_db()
    assert second.status == "sent"


def test_a_delivery_held_past_its_expiry_on_both_channels_is_recorded_expired(clock):
    persona = relaxed(name="Manager", max_per_day=1)
    person = StakeholderFactory(persona=persona, fallback_channel="sms")
    trigger_workflow(personas=[persona], expires_after_hours=2)
    site = project(45)
    for pk in (1, 2, 3):
        unhealthy(site, pk)

    report = tick()

    # The first alert by email, the second by sms (email's daily limit used), the third
    # has neither.
    assert (report["deliveries_now"], report["deliveries_expired"]) == (2, 1)
    assert sorted(deliveries_of(person).values_list("channel", "status")) == [
        ("email", "expired"),
        ("email", "scheduled"),
        ("sms", "scheduled"),
    ]
    expired = deliveries_of(person, status="expired").get()
    assert expired.status_reason.startswith("expired: cadence: daily limit")
    assert expired.status_reason.endswith("; sms is held too (daily limit)")


def test_one_broken_workflow_does_not_stop_the_others(clock, monkeypatch):
    persona = relaxed(name="Manager")
    StakeholderFactory(persona=persona)
    trigger_workflow(name="Broken", personas=[persona])
    trigger_workflow(name="Fine", personas=[persona])
    unhealthy(project(45), 1)
    import notifications.triggers as triggers

    real = triggers._stage

    def stage(workflow, *args):
        if workflow.name == "Broken":
            raise RuntimeError("template gone")
        return real(workflow, *args)

    monkeypatch.setattr(triggers, "_stage", stage)
    report = tick()
    assert report["failed_workflows"] == 1
    # Each workflow's own outcome, so the operator sees which one failed and what the
    # other did (the totals alone said "1 fired" of two workflows).
    broken, fine = report["by_workflow"]
    assert broken == {"workflow": "Broken", "failed": True}
    assert (fine["workflow"], fine["contexts_fired"], fine["deliveries_now"]) == ("Fine", 1, 1)
    summary = triggers.tick_summary(report)
    assert "Broken: failed and rolled back (the next tick tries again" in summary
    assert "Fine: 1 fired, 0 held by a cooldown, 0 not watched, 0 without anyone" in summary
    # The broken one's claim was rolled back: it fires on the next tick.
    assert list(TriggerCooldown.objects.values_list("workflow_key", flat=True)) == [
        f"workflow:{Notification.objects.get().workflow_run.workflow_id}"
    ]


# --- recovery, resolved notices, grouping ------------------------------------------------------


def test_a_queued_alert_whose_kiosk_recovered_is_cancelled_as_resolved(clock):
    persona = relaxed(name="Manager", cooldown_hours=2)
    person = StakeholderFactory(persona=persona)
    trigger_workflow(personas=[persona])
    site = project(45)
    first = unhealthy(site, 1)
    tick()
    dispatch_now()
    clock.move_to(T + timedelta(minutes=5))
    reports(first, charging=False)
    second = unhealthy(site, 2, battery_level=10, charging=True)
    tick()
    queued = deliveries_of(person, status="scheduled").get()
    clock.move_to(T + timedelta(hours=2))
    reports(first, charging=False)
    reports(second, battery_level=95)  # charged meanwhile
    report = dispatch_now()
    queued.refresh_from_db()
    assert (queued.status, report.cancelled) == ("cancelled", 1)
    assert queued.status_reason.startswith("resolved")
    assert list(queued.events.values_list("kind", flat=True)) == ["cancelled"]


def test_a_queued_alert_still_true_at_its_time_is_sent(clock):
    persona = relaxed(name="Manager", cooldown_hours=2)
    person = StakeholderFactory(persona=persona)
    trigger_workflow(personas=[persona])
    site = project(45)
    first = unhealthy(site, 1)
    tick()
    dispatch_now()
    clock.move_to(T + timedelta(minutes=5))
    reports(first, charging=False)
    still = unhealthy(site, 2, battery_level=10, charging=True)
    tick()
    clock.move_to(T + timedelta(hours=2, minutes=1))
    reports(still, battery_level=10)
    Kiosk.objects.filter(pk=1).update(charging=True, last_heartbeat_at=at(12))
    assert dispatch_now().sent == 1
    assert deliveries_of(person, status="sent").count() == 2


def _resolved_world(**setup):
    persona = relaxed(name="Manager")
    people = StakeholderFactory.create_batch(2, persona=persona)
    workflow = trigger_workflow(personas=[persona], send_resolved_notices=True, **setup)
    workflow.trigger_events.update(
        resolved_template=template(
            "Resolved",
            subject="Resolved: {{ kiosk_name }}",
            body="{{ kiosk_name }} is fine again.",
            variables=["kiosk_name"],
        )
    )
    return people


def test_resolved_notice_goes_once_to_the_people_who_were_told(clock):
    people = _resolved_world()
    k = unhealthy(project(45), 123)
    tick()
    dispatch_now()
    clock.move_to(T + timedelta(minutes=5))
    reports(k, charging=True)
    report = tick()
    assert report["resolved_notices"] == 1
    for person in people:
        notice = deliveries_of(
            person, context_key="resolved:kiosk_health_status:123:45:NOT_CHARGING"
        ).get()
        assert notice.subject == "Resolved: Kiosk #123"
    clock.move_to(T + timedelta(minutes=10))
    reports(k, charging=True)
    assert tick()["resolved_notices"] == 0
    assert Delivery.objects.filter(context_key__startswith="resolved:").count() == 2


def test_resolved_notice_also_goes_to_someone_told_by_the_fallback_channel(clock):
    """Ann's alert was held on email at send time (another email took her one of the day)
    and went by SMS instead: she was told, so she hears it is resolved too."""
    persona = relaxed(name="Manager", max_per_day=1)
    ann = StakeholderFactory(name="Ann", persona=persona, fallback_channel="sms")
    workflow = trigger_workflow(personas=[persona], send_resolved_notices=True)
    workflow.trigger_events.update(
        resolved_template=template("Resolved", subject="Resolved", body="{{ summary }}")
    )
    k = unhealthy(project(45), 123)
    tick()
    DeliveryFactory(
        recipient_key=ann.recipient_key, address=ann.email, status="sent", send_at=T, sent_at=T
    )
    dispatch_now()
    assert deliveries_of(ann, channel="sms", status="sent").count() == 1
    clock.move_to(T + timedelta(minutes=5))
    reports(k, charging=True)
    assert tick()["resolved_notices"] == 1
    assert deliveries_of(
        ann, context_key="resolved:kiosk_health_status:123:45:NOT_CHARGING"
    ).exists()


def test_no_resolved_notice_for_a_context_nobody_was_told_about(clock):
    _resolved_world()
    k = unhealthy(project(45), 123)
    tick()  # queued, never dispatched
    Delivery.objects.update(status="cancelled")
    clock.move_to(T + timedelta(minutes=5))
    reports(k, charging=True)
    assert tick()["resolved_notices"] == 0
    assert TriggerCooldown.objects.get().cleared_at == T + timedelta(minutes=5)


def test_resolved_notices_are_off_by_default(clock):
    persona = relaxed(name="Manager")
    StakeholderFactory(persona=persona)
    trigger_workflow(personas=[persona])
    k = unhealthy(project(45), 123)
    tick()
    dispatch_now()
    clock.move_to(T + timedelta(minutes=5))
    reports(k, charging=True)
    assert tick()["resolved_notices"] == 0
    assert TriggerCooldown.objects.get().cleared_at is None


def test_grouping_makes_one_message_per_stakeholder_listing_every_context(clock):
    persona = relaxed(name="Manager")
    people = StakeholderFactory.create_batch(2, persona=persona)
    digest = template(
        "Digest",
        subject="{{ count }} kiosks",
        body="{% for item in items %}{{ item.kiosk_name }}: {{ item.issue_list }}\n{% endfor %}",
        variables=["count", "items"],
    )
    trigger_workflow(personas=[persona], group_contexts=True, grouped_template=digest)
    site = project(45)
    for pk in (1, 2, 3):
        unhealthy(site, pk)
    report = tick()
    assert (report["contexts_fired"], report["notifications"], report["deliveries_now"]) == (
        3,
        1,
        2,
    )
    for person in people:
        message = deliveries_of(person).get()
        assert message.subject == "3 kiosks"
        assert message.body.count("not charging") == 3
        assert message.context_key.startswith("group:3:")


def test_a_grouped_alert_is_cancelled_only_when_every_context_in_it_cleared(clock):
    persona = relaxed(name="Manager", cooldown_hours=2)
    person = StakeholderFactory(persona=persona)
    digest = template("Digest", subject="{{ count }}", body="x", variables=["count"])
    trigger_workflow(personas=[persona], group_contexts=True, grouped_template=digest)
    site = project(45)
    a = unhealthy(site, 1)
    tick()
    dispatch_now()
    clock.move_to(T + timedelta(minutes=5))
    reports(a, charging=False)
    b, c = unhealthy(site, 2), unhealthy(site, 3)
    tick()
    grouped = deliveries_of(person, status="scheduled", context_key__startswith="group:").get()
    clock.move_to(T + timedelta(hours=2, minutes=1))
    for k in (a, b):
        reports(k, charging=True)
    reports(c, charging=False)  # still not charging: the digest still matters
    dispatch_now()
    grouped.refresh_from_db()
    assert grouped.status == "sent"


# --- cost -------------------------------------------------------------------------------------


def _query_world():
    persona = relaxed(name="Manager", cooldown_hours=1)
    people = StakeholderFactory.create_batch(3, persona=persona)
    site = project(45)
    site.stakeholders.add(*people)
    trigger_workflow(
        personas=[persona],
        events=("kiosk_health_status", "kiosk_offline"),
        include_project_stakeholders=True,
    )
    return site


def _add_kiosks(site, count, *, start, **state):
    Kiosk.objects.bulk_create(
        [
            Kiosk(
                pk=pk,
                project=site,
                name=f"K-{pk}",
                battery_level=90,
                last_heartbeat_at=T,
                created_at=T - timedelta(days=1),
                **state,
            )
            for pk in range(start, start + count)
        ]
    )


def _queries(now) -> int:
    with CaptureQueriesContext(connection) as captured:
        evaluate_triggers(now=now)
    return len(captured)


def test_a_tick_over_300_kiosks_issues_as_many_queries_as_over_10():
    site = _query_world()
    _add_kiosks(site, 8, start=1)
    _add_kiosks(site, 2, start=100, charging=False)
    ten = _queries(T)
    assert TriggerCooldown.objects.count() == 2
    # 290 more healthy kiosks; two other kiosks go wrong (two new contexts, as before).
    _add_kiosks(site, 290, start=1000)
    Kiosk.objects.filter(pk__in=[100, 101]).update(charging=True)
    Kiosk.objects.filter(pk__in=[1, 2]).update(charging=False)
    three_hundred = _queries(T + timedelta(seconds=30))
    assert TriggerCooldown.objects.count() == 4
    assert three_hundred == ten


def test_a_tick_within_cooldown_costs_the_same_for_10_and_300_unhealthy_kiosks():
    site = _query_world()
    _add_kiosks(site, 10, start=1, charging=False)
    evaluate_triggers(now=T)
    ten = _queries(T + timedelta(minutes=1))
    _add_kiosks(site, 290, start=1000, charging=False)
    TriggerCooldown.objects.bulk_create(
        [
            TriggerCooldown(
                workflow_key=TriggerCooldown.objects.first().workflow_key,
                context_key=f"kiosk_health_status:{pk}:45:NOT_CHARGING",
                event="kiosk_health_status",
                last_sent_at=T,
                opened_at=T,
            )
            for pk in range(1000, 1290)
        ]
    )
    three_hundred = _queries(T + timedelta(minutes=2))
    assert evaluate_triggers(now=T + timedelta(minutes=3))["contexts_skipped_cooldown"] == 300
    assert three_hundred == ten


# --- doors ------------------------------------------------------------------------------------


def test_the_command_prints_the_counts_as_json(capsys):
    persona = relaxed(name="Manager")
    StakeholderFactory.create_batch(2, persona=persona)
    trigger_workflow(personas=[persona])
    with time_machine.travel(T, tick=False):
        unhealthy(project(45), 1)
    call_command("evaluate_triggers", "--at", "2026-11-23T10:00:00+00:00", "--json")
    report = json.loads(capsys.readouterr().out)
    assert report["contexts_fired"] == 1
    assert report["contexts_skipped_cooldown"] == 0
    assert (report["deliveries_now"], report["deliveries_queued"]) == (2, 0)
    call_command("evaluate_triggers", "--at", "2026-11-23T10:05:00+00:00")
    assert "contexts_skipped_cooldown=1" in capsys.readouterr().out


def test_the_command_says_its_context_counts_are_per_workflow(capsys):
    """Two workflows judging one context: 1 found, 2 fired (it said "1 found, 2 fired")."""
    persona = relaxed(name="Manager")
    StakeholderFactory(persona=persona)
    trigger_workflow(name="Day shift", personas=[persona])
    trigger_workflow(name="Night shift", personas=[persona])
    with time_machine.travel(T, tick=False):
        unhealthy(project(45), 1)
    call_command("evaluate_triggers", "--at", "2026-11-23T10:00:00+00:00")
    assert (
        "1 context(s) found; over 2 active workflow(s), each counted per workflow: 2 fired, "
        "0 held by a cooldown, 0 not watched, 0 without anyone to tell. Deliveries: 2 now, "
        "0 queued by cadence, 0 expired"
    ) in capsys.readouterr().err


def test_the_command_refuses_a_bad_time():
    with pytest.raises(CommandError, match="ISO 8601"):
        call_command("evaluate_triggers", "--at", "soon")


def test_beat_can_run_the_task_and_setup_schedules_enables_it():
    from celery import current_app
    from django_celery_beat.models import PeriodicTask

    from config.schedules import setup_schedules

    current_app.loader.import_default_modules()
    assert "herald.evaluate_triggers" in current_app.tasks
    setup_schedules()
    task = PeriodicTask.objects.get(task="herald.evaluate_triggers")
    assert (task.enabled, task.interval.every) == (True, 300)


def test_a_broken_workflows_counts_are_rolled_back_with_it(clock, monkeypatch):
    persona = relaxed(name="Manager")
    StakeholderFactory(persona=persona)
    trigger_workflow(name="Broken", personas=[persona])
    unhealthy(project(45), 1)
    import notifications.triggers as triggers

    def stage(workflow, *args):
        raise RuntimeError("template gone")

    monkeypatch.setattr(triggers, "_stage", stage)
    report = tick()
    assert report["failed_workflows"] == 1
    assert report["by_workflow"] == [{"workflow": "Broken", "failed": True}]
    assert (report["contexts_fired"], report["deliveries_now"], report["notifications"]) == (
        0,
        0,
        0,
    )
    assert not Delivery.objects.exists() and not TriggerCooldown.objects.exists()


def test_a_cooldown_saved_before_the_bound_does_not_stop_the_tick(clock):
    from cadence.models import Stakeholder

    persona = relaxed(name="Manager")
    zed, uma = StakeholderFactory(persona=persona), StakeholderFactory(persona=persona)
    Stakeholder.objects.filter(pk=zed.pk).update(cooldown_hours=1e9)
    trigger_workflow(personas=[persona])
    unhealthy(project(45), 1)
    report = tick()
    assert (report["failed_workflows"], report["contexts_fired"]) == (0, 1)
    assert deliveries_of(uma).count() == deliveries_of(zed).count() == 1


def test_a_trigger_workflow_of_risk_3_is_not_run_and_the_tick_says_so(clock):
    from notifications.models import Workflow

    persona = relaxed(name="Manager")
    StakeholderFactory(persona=persona)
    workflow = trigger_workflow(personas=[persona])
    Workflow.objects.filter(pk=workflow.pk).update(risk_level=4)  # saved before the rule
    unhealthy(project(45), 1)
    report = tick()
    assert (report["workflows"], report["workflows_refused_high_risk"]) == (0, 1)
    assert report["by_workflow"] == [
        {"workflow": workflow.name, "refused": "risk 3 or more: lower it to run"}
    ]
    assert not Delivery.objects.exists()


def test_the_command_prints_each_workflow_s_own_counts(clock):
    """Two workflows judging one context: the totals say 2 fired of 1 found; the lines
    after them say which workflow did what."""
    import io

    persona = relaxed(name="Manager")
    StakeholderFactory(persona=persona)
    trigger_workflow(name="Ops alerts", personas=[persona])
    trigger_workflow(name="Site report", personas=[persona])
    unhealthy(project(45), 1)
    out, err = io.StringIO(), io.StringIO()
    call_command("evaluate_triggers", stdout=out, stderr=err)
    lines = out.getvalue().splitlines()
    assert "contexts_found=1" in lines[0] and "contexts_fired=2" in lines[0]
    assert lines[1].startswith("  Ops alerts: contexts_fired=1  contexts_skipped_cooldown=0")
    assert lines[2].startswith("  Site report: contexts_fired=1")
    assert "Ops alerts: 1 fired, 0 held by a cooldown" in err.getvalue()
    out = io.StringIO()
    call_command("evaluate_triggers", "--json", stdout=out, stderr=io.StringIO())
    rows = json.loads(out.getvalue())["by_workflow"]
    assert [(r["workflow"], r["contexts_skipped_cooldown"]) for r in rows] == [
        ("Ops alerts", 1),
        ("Site report", 1),
    ]
