from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from notifications.holds import explain
from notifications.models import (
    AuditEntry,
    Delivery,
    KillSwitch,
    KillSwitchChange,
    ProviderBreaker,
    Sender,
    Suppression,
)
from notifications.pacing import reserve_slots
from tests.notifications.factories import CustomerFactory, DeliveryFactory

pytestmark = pytest.mark.django_db
CHANGELIST = "admin:notifications_killswitch_changelist"


@pytest.fixture
def switch():
    return KillSwitch.objects.create(name="high_risk_ops", scope="high_risk_ops")


def _staff(client, *perms):
    user = User.objects.create_user("clerk", password="pw", is_staff=True)
    codenames = ["view_killswitch", "change_killswitch", *perms]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return user


def test_turning_a_switch_on_shows_a_confirmation_then_audits(admin_client, switch):
    url = reverse(CHANGELIST)
    page = admin_client.post(url, {"action": "turn_on", "_selected_action": [switch.pk]})
    assert (
        "Turning on 1 switch(es) freezes every matching scheduled delivery" in page.content.decode()
    )
    switch.refresh_from_db()
    assert switch.is_on is False  # nothing happens before the confirmation

    admin_client.post(
        url,
        {"action": "turn_on", "_selected_action": [switch.pk], "post": "yes", "reason": "bad copy"},
    )
    switch.refresh_from_db()
    assert (switch.is_on, switch.changed_by, switch.reason) == (True, "admin", "bad copy")
    assert KillSwitchChange.objects.get().turned_on is True
    entry = AuditEntry.objects.get(action="killswitch_on")  # in the audit trail too
    assert (entry.by, entry.target) == ("admin", f"killswitch:{switch.name}")
    assert entry.detail["reason"] == "bad copy"


def test_turning_on_switches_that_are_on_says_so(admin_client, switch):
    other = KillSwitch.objects.create(name="stop sms", scope="channel", channel="sms", is_on=True)
    url = reverse(CHANGELIST)
    nothing = admin_client.post(url, {"action": "turn_on", "_selected_action": [other.pk]})
    assert [str(m) for m in nothing.wsgi_request._messages] == [
        "Nothing to do: already on: stop sms."
    ]
    both = [switch.pk, other.pk]
    done = admin_client.post(
        url, {"action": "turn_on", "_selected_action": both, "post": "yes", "reason": "audit"}
    )
    assert [str(m) for m in done.wsgi_request._messages][-1] == (
        "1 kill switch(es) turned on. Already on: stop sms."
    )
    assert KillSwitchChange.objects.count() == 1


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_a_switch_is_not_turned_on_without_a_reason(admin_client, switch, reason):
    data = {"action": "turn_on", "_selected_action": [switch.pk], "post": "yes"}
    if reason is not None:
        data["reason"] = reason
    page = admin_client.post(reverse(CHANGELIST), data, follow=True)
    assert "Give a reason to turn kill switches on; nothing changed." in page.content.decode()
    switch.refresh_from_db()
    assert (switch.is_on, switch.reason) == (False, "")
    assert not KillSwitchChange.objects.exists()


def test_staff_without_the_toggle_permission_cannot_turn_a_switch_on(client, switch):
    _staff(client)
    client.post(
        reverse(CHANGELIST),
        {"action": "turn_on", "_selected_action": [switch.pk], "post": "yes", "reason": "x"},
    )
    switch.refresh_from_db()
    assert switch.is_on is False
    assert not KillSwitchChange.objects.exists()


def test_staff_with_the_toggle_permission_can(client, switch):
    _staff(client, "toggle_killswitch")
    client.post(
        reverse(CHANGELIST),
        {"action": "turn_on", "_selected_action": [switch.pk], "post": "yes", "reason": "x"},
    )
    switch.refresh_from_db()
    assert switch.is_on is True


def test_the_is_on_flag_cannot_be_edited_in_the_form(admin_client, switch):
    admin_client.post(
        reverse("admin:notifications_killswitch_change", args=[switch.pk]),
        {"name": switch.name, "scope": switch.scope, "is_on": "on"},
    )
    switch.refresh_from_db()
    assert switch.is_on is False


def test_the_delivery_list_says_why_a_delivery_waits_and_until_when(admin_client):
    now = timezone.now()
    KillSwitch.objects.create(
        name="stop sms", scope="channel", channel="sms", is_on=True, reason="outage"
    )
    DeliveryFactory(channel="sms", address="+14155550100", send_at=now)
    later = DeliveryFactory(send_at=now + timedelta(hours=3), status_reason="cadence: daily limit")
    page = admin_client.get(reverse("admin:notifications_delivery_changelist")).content.decode()
    assert "frozen by kill switch stop sms: outage — waits for a person" in page
    assert f"cadence: daily limit — expected {later.send_at:%Y-%m-%d %H:%M:%S}" in page


def test_holds_name_the_breaker_and_its_trial_time():
    now = timezone.now()
    ProviderBreaker.objects.create(
        provider="email:anymail", state="open", opened_at=now, cooloff_seconds=60
    )
    hold = explain(DeliveryFactory(send_at=now), now=now)
    assert hold.kind == "breaker"
    assert hold.expected_at == now + timedelta(seconds=60)


def test_holds_name_a_suppression():
    Suppression.objects.create(address="x@example.com", channel="email", reason="unsubscribe")
    hold = explain(DeliveryFactory(address="x@example.com"), now=timezone.now())
    assert (hold.kind, hold.reason, hold.expected_at) == (
        "suppressed",
        "will be skipped: Unsubscribed",
        None,
    )


def test_the_delivery_list_names_suppressions_read_for_the_whole_page(admin_client):
    Suppression.objects.create(address="x@example.com", channel="email", reason="unsubscribe")
    Suppression.objects.create(address="+14155550100", channel="sms", reason="bounce")
    DeliveryFactory(address="X@example.com")  # compared without case, as dispatch does
    DeliveryFactory(channel="sms", address="+14155550100", send_at=timezone.now())
    DeliveryFactory(address="x@example.com", status="sent")
    DeliveryFactory.create_batch(3)

    page = admin_client.get(reverse("admin:notifications_delivery_changelist")).content.decode()

    assert page.count("will be skipped: Unsubscribed") == 1
    assert page.count("will be skipped: Hard bounce") == 1
    assert page.count("due now: the next dispatch round sends it") == 3


def test_manual_suppression_in_the_admin_records_who(admin_client):
    admin_client.post(
        reverse("admin:notifications_suppression_add"),
        {"address": "Angry@Example.com", "channel": "email", "reason": "manual", "source": ""},
    )
    suppression = Suppression.objects.get()
    assert (suppression.address, suppression.created_by) == ("angry@example.com", "admin")
    # "Save and continue editing" opens the entry it saved (it went to ".../None/change/")
    response = admin_client.post(
        reverse("admin:notifications_suppression_add"),
        {"address": "+14155550100", "channel": "sms", "reason": "manual", "_continue": "1"},
    )
    added = Suppression.objects.get(channel="sms")
    assert response.url == reverse("admin:notifications_suppression_change", args=[added.pk])


def test_deliveries_cannot_be_deleted_from_the_admin(admin_client):
    """A deleted delivery would take its idempotency key with it: the same message could be
    staged and sent again."""
    delivery = DeliveryFactory()
    changelist = reverse("admin:notifications_delivery_changelist")
    assert "delete_selected" not in admin_client.get(changelist).content.decode()
    admin_client.post(
        changelist, {"action": "delete_selected", "_selected_action": [delivery.pk], "post": "yes"}
    )
    url = reverse("admin:notifications_delivery_delete", args=[delivery.pk])
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert Delivery.objects.filter(pk=delivery.pk).exists()


def test_a_sender_whose_slot_is_ahead_of_the_clock_can_restart_its_pace(admin_client):
    """The admin's door onto pacing.sender_restart (tests/notifications/test_holds.py
    follows the held deliveries through it)."""
    now = timezone.now()
    ahead = Sender.objects.create(
        key="email:ahead",
        channel="email",
        rate_per_second=14,
        next_slot_at=now + timedelta(hours=2),
    )
    past = Sender.objects.create(
        key="email:past", channel="email", rate_per_second=14, next_slot_at=now - timedelta(hours=1)
    )
    url = reverse("admin:notifications_sender_changelist")
    data = {"action": "restart_pace", "_selected_action": [ahead.pk, past.pk]}
    page = admin_client.post(url, data).content.decode()
    assert "Restart pacing of 1 sender(s)" in page
    ahead.refresh_from_db()
    assert ahead.next_slot_at is not None  # nothing before the confirmation

    page = admin_client.post(url, {**data, "post": "yes"}, follow=True).content.decode()
    assert "1 sender(s) pace from now; 0 delivery(ies) waiting for a slot are due again." in page
    assert AuditEntry.objects.get().action == "sender_pace_restart"
    ahead.refresh_from_db()
    past.refresh_from_db()
    assert (ahead.next_slot_at, ahead.paused_until) == (None, None)
    assert past.next_slot_at == now - timedelta(hours=1)
    slots = reserve_slots(key="email:ahead", count=2, now=now)
    assert slots[0] == now


def _switch_form(admin_client, switch, **fields) -> dict:
    """What the change form posts: its fields and its inline's management form."""
    url = reverse("admin:notifications_killswitch_change", args=[switch.pk])
    [inline] = admin_client.get(url).context["inline_admin_formsets"]
    management = inline.formset.management_form
    return {
        **{f"{management.prefix}-{key}": value for key, value in management.initial.items()},
        "name": switch.name,
        "scope": switch.scope,
        "channel": switch.channel,
        **fields,
    }


@pytest.mark.parametrize("on", [True, False])
def test_a_switch_that_is_on_cannot_be_widened_and_no_switch_can_be_deleted(admin_client, on):
    switch = KillSwitch.objects.create(
        name="stop sms", scope="channel", channel="sms", is_on=on, reason="outage"
    )
    url = reverse("admin:notifications_killswitch_change", args=[switch.pk])
    data = _switch_form(admin_client, switch, name="stop all", scope="everything", channel="")
    assert admin_client.post(url, data).status_code == 302  # saved (what the form may change)
    switch.refresh_from_db()
    if on:  # held sends move only by turning it off, with a reason
        assert (switch.name, switch.scope, switch.channel) == ("stop sms", "channel", "sms")
    else:  # the name stays: people, its history and the audit know it by it
        assert (switch.name, switch.scope, switch.channel) == ("stop sms", "everything", "")
    changelist = reverse("admin:notifications_killswitch_changelist")
    assert "delete_selected" not in admin_client.get(changelist).content.decode()
    delete = reverse("admin:notifications_killswitch_delete", args=[switch.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert KillSwitch.objects.filter(pk=switch.pk, is_on=on).exists()


def test_a_switch_left_inconsistent_by_an_older_form_can_still_be_saved_while_on(admin_client):
    switch = KillSwitch.objects.create(
        name="all", scope="everything", channel="sms", is_on=True, reason="outage"
    )
    url = reverse("admin:notifications_killswitch_change", args=[switch.pk])
    assert admin_client.post(url, _switch_form(admin_client, switch)).status_code == 302


def test_a_bounced_address_that_is_not_valid_stays_suppressed_and_its_page_saves(admin_client):
    kept = Suppression.objects.create(address="bob@@example", channel="email", reason="bounce")
    url = reverse("admin:notifications_suppression_change", args=[kept.pk])
    assert admin_client.post(url, {}).status_code == 302
    assert Suppression.objects.filter(pk=kept.pk, address="bob@@example").exists()


def test_a_channel_switch_names_no_workflow():
    from django.core.exceptions import ValidationError

    from tests.notifications.factories import WorkflowFactory

    workflow = WorkflowFactory()
    with pytest.raises(ValidationError, match="Only a workflow switch names a workflow"):
        KillSwitch(name="x", scope="channel", channel="sms", workflow=workflow).full_clean()


def test_proposed_actions_cannot_be_deleted(admin_client):
    from notifications.models import ProposedAction
    from tests.notifications.factories import WorkflowRunFactory

    action = ProposedAction.objects.create(
        workflow_run=WorkflowRunFactory(),
        action_type="workflow_batch_notify",
        entity_ref="run:1",
        subject="s",
        body="b",
    )
    url = reverse("admin:notifications_proposedaction_delete", args=[action.pk])
    assert admin_client.post(url, {"post": "yes"}).status_code == 403
    assert ProposedAction.objects.filter(pk=action.pk).exists()


def test_restarting_a_sender_that_is_not_ahead_says_there_is_nothing_to_restart(admin_client):
    past = Sender.objects.create(
        key="email:past",
        channel="email",
        rate_per_second=14,
        next_slot_at=timezone.now() - timedelta(hours=1),
    )
    page = admin_client.post(
        reverse("admin:notifications_sender_changelist"),
        {"action": "restart_pace", "_selected_action": [past.pk], "post": "yes"},
        follow=True,
    ).content.decode()
    assert "None of the selected senders has a next slot or pause ahead of the clock" in page
    assert not AuditEntry.objects.exists()


def test_a_delivery_of_a_run_the_breaker_aborted_says_so_and_waits_for_a_person(admin_client):
    from tests.notifications.factories import WorkflowRunFactory

    now = timezone.now()
    run = WorkflowRunFactory(status="aborted")
    held = DeliveryFactory(send_at=now, workflow_run=run)
    assert (explain(held, now=now).kind, explain(held, now=now).expected_at) == ("halted", None)
    page = admin_client.get(reverse("admin:notifications_delivery_changelist")).content.decode()
    assert "its run was halted: resume or cancel it — waits for a person" in page
    assert "due now" not in page


def test_the_ledger_the_audit_trail_and_runs_cannot_be_deleted_from_the_admin(admin_client):
    """An event deleted would take its idempotency key with it (the same event could be
    emitted and sent again); a run deleted, its approvals; an audit entry, the trail."""
    from notifications.events import record_event
    from notifications.models import AuditEntry, DeliveryEvent, Event, EventHandling, WorkflowRun
    from tests.notifications.factories import WorkflowRunFactory

    now = timezone.now()
    event, _ = record_event(
        "production_run.reminder_idle", {"production_run_id": 1}, idempotency_key="k:1", now=now
    )
    delivery = DeliveryFactory()
    records = {
        Event: event,
        DeliveryEvent: DeliveryEvent.objects.create(delivery=delivery, kind="sent", at=now),
        AuditEntry: AuditEntry.objects.create(at=now, by="mike", action="x", target="t"),
        WorkflowRun: WorkflowRunFactory(),
    }
    records[EventHandling] = EventHandling.objects.filter(event=event).first()
    for model, record in records.items():
        meta = model._meta
        changelist = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        assert "delete_selected" not in admin_client.get(changelist).content.decode(), model
        admin_client.post(
            changelist,
            {"action": "delete_selected", "_selected_action": [record.pk], "post": "yes"},
        )
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_delete", args=[record.pk])
        assert admin_client.post(url, {"post": "yes"}).status_code == 403, model
        assert model.objects.filter(pk=record.pk).exists(), model


def test_a_workflow_s_type_cannot_be_changed_once_it_exists(admin_client):
    from notifications.models import Workflow

    workflow = Workflow.objects.create(name="Kiosk health", type="trigger", risk_level=1)
    url = reverse("admin:notifications_workflow_change", args=[workflow.pk])
    page = admin_client.get(url).content.decode()
    assert 'name="type"' not in page  # shown, not a field
    admin_client.post(
        url,
        {
            "name": "Kiosk health",
            "type": "schedule",
            "description": "",
            "risk_level": "4",
            "is_active": "on",
            "retry_max_attempts": "3",
            "retry_base_seconds": "2",
            "retry_max_seconds": "30",
        },
    )
    workflow.refresh_from_db()
    assert workflow.type == "trigger"
    assert workflow.risk_level == 1  # refused: a trigger is risk 1 or 2
    add = admin_client.get(reverse("admin:notifications_workflow_add")).content.decode()
    assert 'name="type"' in add  # chosen when the workflow is defined


KEPT_RECORDS = {
    "notifications.AuditEntry",
    "notifications.DeliveryEvent",
    "notifications.Event",
    "notifications.EventHandling",
    "notifications.ProviderReport",
    "notifications.ReflexionEntry",
    "notifications.UnmatchedProviderEvent",
    "notifications.VerifyCheck",
    "notifications.WorkflowRun",
}


def test_every_kept_record_refuses_deletion_in_the_admin(admin_client):
    """Each of them, by its admin (delete_view asks the permission before looking the row up,
    so no row is needed to see the refusal)."""
    from django.contrib import admin

    from notifications.admin_records import KeptRecordAdmin

    kept = {
        model._meta.label: model
        for model, model_admin in admin.site._registry.items()
        if isinstance(model_admin, KeptRecordAdmin)
    }
    assert set(kept) == KEPT_RECORDS
    for label, model in kept.items():
        meta = model._meta
        changelist = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        assert "delete_selected" not in admin_client.get(changelist).content.decode(), label
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_delete", args=[1])
        assert admin_client.post(url, {"post": "yes"}).status_code == 403, label


def test_a_high_risk_switch_blocks_launches_whatever_its_name(admin_client):
    """Launches were blocked by the switch named high_risk_ops: renamed, it froze sends
    (by its scope) but no longer blocked a launch."""
    from notifications import batch

    KillSwitch.objects.create(name="stop risky work", scope="high_risk_ops", is_on=True)
    KillSwitch.objects.create(name="stop sms", scope="channel", channel="sms", is_on=True)
    CustomerFactory(bid="B1")
    preview = batch.build_preview(
        cohort_filter="bid=B1",
        subject="Hi",
        body_template="Hello",
        max_recipients=None,
        now=timezone.now(),
    )
    (check,) = [c for c in preview.checks if c.name == "kill_switch"]
    assert not check.passed
    assert check.message == "The kill switch stop risky work is on: launches are blocked."
    off = KillSwitch.objects.create(name="spare", scope="high_risk_ops")
    url = reverse("admin:notifications_killswitch_change", args=[off.pk])
    page = admin_client.get(url).content.decode()
    assert 'name="name"' not in page  # fixed once made, also while off
    assert 'name="scope"' in page  # what an off switch covers may still be edited


def test_delivery_actions_are_in_the_audit_trail(admin_client):
    from notifications import operations

    now = timezone.now()
    scheduled = DeliveryFactory.create_batch(2)
    failed = DeliveryFactory(status="failed")
    unknown = DeliveryFactory(status="unknown")
    ids = [d.id for d in scheduled]
    assert operations.delivery_cancel(ids=[*ids, failed.id], now=now, by="ops") == 2
    assert operations.delivery_retry(ids=[failed.id], now=now, by="ops") == 1
    assert operations.delivery_reconcile(ids=[unknown.id], accepted=True, now=now, by="ops") == 1
    assert operations.delivery_cancel(ids=ids, now=now, by="ops") == 0  # nothing: no entry
    entries = {
        e.action: (e.by, sorted(e.detail["deliveries"])) for e in AuditEntry.objects.order_by("id")
    }
    assert entries == {
        "delivery_cancel": ("ops", sorted(ids)),
        "delivery_retry": ("ops", [failed.id]),
        "delivery_reconcile_sent": ("ops", [unknown.id]),
    }


def test_the_audit_list_cuts_a_long_list_of_deliveries_the_entry_s_page_shows_all(admin_client):
    entry = AuditEntry.objects.create(
        at=timezone.now(),
        by="ops",
        action="delivery_retry",
        target="10000 deliveries",
        detail={"deliveries": list(range(1, 10001)), "reason": "retry requested by ops"},
    )
    page = admin_client.get(reverse("admin:notifications_auditentry_changelist")).content
    assert "[1, 2, 3, 4, 5] … (10,000 in all)" in page.decode()
    assert b"9999" not in page
    detail = admin_client.get(
        reverse("admin:notifications_auditentry_change", args=[entry.pk])
    ).content
    assert b"9999" in detail


def test_lifting_suppressions_in_the_admin_is_audited(admin_client):
    from notifications.models import AuditEntry

    one = Suppression.objects.create(address="a@example.com", channel="email", reason="bounce")
    two = Suppression.objects.create(address="b@example.com", channel="email", reason="complaint")
    kept = Suppression.objects.create(address="c@example.com", channel="email", reason="manual")
    admin_client.post(
        reverse("admin:notifications_suppression_delete", args=[one.pk]), {"post": "yes"}
    )
    admin_client.post(
        reverse("admin:notifications_suppression_changelist"),
        {"action": "delete_selected", "_selected_action": [two.pk], "post": "yes"},
    )

    assert list(Suppression.objects.all()) == [kept]
    entries = AuditEntry.objects.filter(action="suppression_lifted").order_by("id")
    assert [(e.by, e.target, e.detail["reason"]) for e in entries] == [
        ("admin", "suppression:email:a@example.com", "bounce"),
        ("admin", "suppression:email:b@example.com", "complaint"),
    ]


def test_a_provider_breaker_and_its_history_cannot_be_deleted(admin_client):
    breaker = ProviderBreaker.objects.create(provider="email:recording", state="open")
    page = admin_client.get(reverse("admin:notifications_providerbreaker_changelist"))
    assert "delete_selected" not in page.content.decode()
    response = admin_client.post(
        reverse("admin:notifications_providerbreaker_delete", args=[breaker.pk]), {"post": "yes"}
    )
    assert response.status_code == 403
    assert ProviderBreaker.objects.filter(pk=breaker.pk).exists()
