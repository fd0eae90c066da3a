"""What a walkthrough of seed 002 found: an unfillable template mapping, held messages not
released by an approval, same-day re-runs counted as "not due", what --at does with the
events, and "," meaning all in manage_whatsapp_templates."""

import json
from datetime import timedelta
from io import StringIO

import pytest
import responses
from django.core.management import CommandError, call_command
from django_celery_beat.models import PeriodicTask

from config.schedules import SCHEDULES, setup_schedules
from notifications import dispatch, events
from notifications.dispatch import ManualClock
from notifications.models import Delivery, EventHandling, Notification, RecordedMessage
from production_runs import dispatcher
from production_runs.activation import DISCOVER_TASK, activation_gate, reminder_outlook
from production_runs.discoverer import discover_reminders
from production_runs.dispatcher import TEMPLATE_REVIEW_RETRY, template_variables
from production_runs.management.commands.discover_reminders import Command as DiscoverCommand
from production_runs.models import (
    EventTemplateMapping,
    ReminderSettings,
    TemplateStatus,
    TemplateVariantStatus,
)
from production_runs.whatsapp_templates import SPECS
from tests.production_runs.factories import (
    DAY,
    HOUR,
    NOW,
    AUPartnerFactory,
    PlatformFactory,
    approve_all,
    idle_run,
    not_started_run,
    pending_run,
)

pytestmark = pytest.mark.django_db
MAPPINGS = "/admin/production_runs/eventtemplatemapping/"
NOT_STARTED_EVENT = "production_run.reminder_not_started"
DIGEST_NOT_STARTED = "jyt_production_run_digest_not_started_v1"
PENDING = "jyt_production_run_reminder_pending_v1"
NOT_STARTED = "jyt_production_run_reminder_not_started_v1"
MINUTE = timedelta(minutes=1)


def send(now):
    return dispatch.dispatch_due(now=now, clock=ManualClock(now))


def stage(now=NOW):
    """The discoverer emits, the dispatcher stages (nothing sent yet)."""
    discover_reminders(now=now)
    events.handle_due(now=now, limit=1000)


def discover(*args) -> str:
    out = StringIO()
    call_command("discover_reminders", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def row(out: str, label: str) -> int:
    line = next(line for line in out.splitlines() if line.strip().startswith(label))
    return int(line.split()[-1])


# --- 1. a template the event cannot fill -------------------------------------------------------


def mapping(event_name=NOT_STARTED_EVENT) -> EventTemplateMapping:
    return EventTemplateMapping.objects.get(event_name=event_name)


def change(admin_client, target: EventTemplateMapping, template: str):
    return admin_client.post(
        f"{MAPPINGS}{target.pk}/change/",
        {
            "event_name": target.event_name,
            "template_name": template,
            "send_design_image": "on" if target.send_design_image else "",
            "is_live": "on",
        },
    )


def test_the_mapping_form_refuses_a_template_whose_variables_the_event_lacks(admin_client):
    target = mapping()
    response = change(admin_client, target, DIGEST_NOT_STARTED)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["template_name"]
    assert errors["template_name"][0].startswith(
        f"{DIGEST_NOT_STARTED} needs run_count, run_list, which {NOT_STARTED_EVENT} does "
        "not provide"
    )
    assert mapping().template_name == NOT_STARTED


def test_the_mapping_form_refuses_a_run_template_for_a_digest_event(admin_client):
    target = mapping("production_run.digest_not_started")
    response = change(admin_client, target, NOT_STARTED)
    errors = response.context["adminform"].form.errors["template_name"]
    assert "needs design_name, run_id, days_since_acceptance" in errors[0]
    assert mapping("production_run.digest_not_started").template_name == DIGEST_NOT_STARTED


def test_the_mapping_form_accepts_a_template_the_event_fills(admin_client):
    EventTemplateMapping.objects.filter(pk=mapping().pk).update(template_name=PENDING)
    response = change(admin_client, mapping(), NOT_STARTED)
    assert response.status_code == 302
    assert mapping().template_name == NOT_STARTED


def test_an_unfillable_mapping_saved_earlier_cannot_be_made_live_from_the_list(admin_client):
    target = mapping()
    EventTemplateMapping.objects.filter(pk=target.pk).update(
        template_name=DIGEST_NOT_STARTED, is_live=False
    )
    rows = list(EventTemplateMapping.objects.order_by("event_name"))
    data = {
        "form-TOTAL_FORMS": len(rows),
        "form-INITIAL_FORMS": len(rows),
        "_save": "Save",
    }
    for number, each in enumerate(rows):
        data[f"form-{number}-id"] = each.pk
        if each.pk == target.pk or each.is_live:
            data[f"form-{number}-is_live"] = "on"
        if each.send_design_image:
            data[f"form-{number}-send_design_image"] = "on"
    response = admin_client.post(MAPPINGS, data)
    assert response.status_code == 200
    assert "Not made live: " in response.content.decode()
    assert mapping().is_live is False


def test_a_mapping_to_a_template_not_in_code_is_named_on_the_list_not_a_server_error(
    admin_client,
):
    EventTemplateMapping.objects.filter(event_name="production_run.cancelled").update(
        template_name="nope_v1"
    )
    rows = list(EventTemplateMapping.objects.order_by("event_name"))
    data = {"form-TOTAL_FORMS": len(rows), "form-INITIAL_FORMS": len(rows), "_save": "Save"}
    for number, each in enumerate(rows):
        data[f"form-{number}-id"] = each.pk
        data[f"form-{number}-is_live"] = "on"
    response = admin_client.post(MAPPINGS, data)
    assert response.status_code == 200
    assert "No template &#x27;nope_v1&#x27; in code" in response.content.decode()


def test_the_gate_fails_on_a_live_mapping_whose_template_the_event_cannot_fill():
    setup_schedules(registered_tasks={spec.task for spec in SCHEDULES})
    assert PeriodicTask.objects.filter(task=DISCOVER_TASK).exists()
    approve_all(PlatformFactory(label="IN"))
    assert activation_gate().holds
    EventTemplateMapping.objects.filter(event_name=NOT_STARTED_EVENT).update(
        template_name=DIGEST_NOT_STARTED
    )

    gate = activation_gate()

    assert not gate.holds
    check = next(c for c in gate.checks if c.label == "dispatcher mappings live")
    assert not check.ok
    assert check.detail.startswith(
        f"unusable mapping: {DIGEST_NOT_STARTED} needs run_count, run_list, which "
        f"{NOT_STARTED_EVENT} does not provide"
    )


def test_a_reminder_through_an_unfillable_mapping_fails_saying_what_is_missing(clock):
    approve_all(PlatformFactory(label="IN"))
    EventTemplateMapping.objects.filter(event_name=NOT_STARTED_EVENT).update(
        template_name=DIGEST_NOT_STARTED
    )
    not_started_run()
    discover_reminders(now=NOW)

    assert events.handle_due(now=NOW) == {"done": 0, "failed": 1, "gave_up": 0}

    handling = EventHandling.objects.get()
    assert handling.last_error.startswith("TemplateNeedsMissingVariables: ")
    assert (
        f"the mapping of {NOT_STARTED_EVENT} is unusable: {DIGEST_NOT_STARTED} needs "
        "run_count, run_list" in handling.last_error
    )
    assert "KeyError" not in handling.last_error
    assert not Notification.objects.exists() and not Delivery.objects.exists()


def test_the_variables_the_dispatcher_names_are_the_ones_it_fills():
    run = not_started_run()
    assert set(template_variables(run=run, partner=run.partner, at=NOW)) == set(
        dispatcher.RUN_VARIABLES
    )
    # Every shipped default mapping is fillable by its event.
    for spec in SPECS.values():
        needs = set(spec.variables)
        assert needs <= set(dispatcher.RUN_VARIABLES) or needs <= set(
            dispatcher.DIGEST_VARIABLES
        ), spec.name


# --- 2. an approval releases the messages held for it -------------------------------------------


@pytest.fixture
def held(clock):
    """Messages held for three variants in review: the pending reminder in Hindi and in
    English on IN, the not-started reminder in Hindi on IN, the pending one in English on AU."""
    india, australia = PlatformFactory(label="IN"), PlatformFactory(label="AU")
    approve_all(india, australia)
    for platform, template, language in [
        (india, PENDING, "hi"),
        (india, PENDING, "en"),
        (india, NOT_STARTED, "hi"),
        (australia, PENDING, "en"),
    ]:
        TemplateVariantStatus.objects.filter(
            platform=platform, template_name=template, language=language
        ).update(status=TemplateStatus.PENDING)
    runs = {
        "pending_hi": pending_run(partner__language="hi"),
        "pending_en": pending_run(partner__language="en"),
        "not_started_hi": not_started_run(partner__language="hi"),
        "pending_au": pending_run(partner=AUPartnerFactory()),
    }
    stage()
    send(NOW)
    messages = {
        name: Delivery.objects.get(
            context_key=f"production_run:{run.id}:reminder:2026-11-23",
            payload__template__in=[PENDING, NOT_STARTED],
        )
        for name, run in runs.items()
    }
    for message in messages.values():
        assert message.status == "scheduled" and message.send_at == NOW + TEMPLATE_REVIEW_RETRY
        assert message.status_reason.endswith(": waiting for approval")
    return india, australia, messages


def webhook(platform, template, language, status, key):
    """Meta's message_template_status_update, as the webhook records it in the ledger."""
    events.record_event(
        "whatsapp.template_status",
        {
            "waba_id": platform.waba_id,
            "event": status,
            "template_id": "801",
            "template_name": template,
            "language": language,
            "reason": "INVALID_FORMAT" if status == "REJECTED" else "",
        },
        idempotency_key=key,
        now=events.timezone.now(),
    )
    events.handle_due(now=events.timezone.now())


def test_an_approval_from_the_webhook_makes_the_messages_held_for_it_due_now(clock, held):
    india, _, messages = held
    clock.move_to(NOW + 5 * MINUTE)
    webhook(india, PENDING, "hi", "APPROVED", "tpl-approved")

    released = Delivery.objects.get(pk=messages["pending_hi"].pk)
    assert released.status == "scheduled" and released.send_at == NOW + 5 * MINUTE
    assert released.status_reason == (
        f"template {PENDING} (hi) now APPROVED on WhatsApp platform IN: due for sending"
    )
    # Held for another language, another template, another platform: as they were.
    for name in ("pending_en", "not_started_hi", "pending_au"):
        other = Delivery.objects.get(pk=messages[name].pk)
        assert (other.status, other.send_at, other.status_reason) == (
            "scheduled",
            NOW + TEMPLATE_REVIEW_RETRY,
            messages[name].status_reason,
        ), name

    send(NOW + 5 * MINUTE)
    send(NOW + 6 * MINUTE)  # a second dispatch finds nothing more to send

    released.refresh_from_db()
    assert released.status == "sent"
    assert RecordedMessage.objects.filter(payload__template=PENDING).count() == 1
    assert (
        Delivery.objects.filter(status="sent", payload__template__in=[PENDING, NOT_STARTED]).count()
        == 1
    )


def test_an_approval_of_the_same_template_on_another_platform_releases_only_its_own(clock, held):
    _, australia, messages = held
    clock.move_to(NOW + 5 * MINUTE)
    webhook(australia, PENDING, "en", "APPROVED", "tpl-au")
    assert Delivery.objects.get(pk=messages["pending_au"].pk).send_at == NOW + 5 * MINUTE
    assert Delivery.objects.get(pk=messages["pending_en"].pk).send_at == (
        NOW + TEMPLATE_REVIEW_RETRY
    )


def test_a_rejection_from_the_webhook_cancels_the_held_messages_at_the_next_dispatch(clock, held):
    india, _, messages = held
    clock.move_to(NOW + 5 * MINUTE)
    webhook(india, PENDING, "hi", "REJECTED", "tpl-rejected")

    due = Delivery.objects.get(pk=messages["pending_hi"].pk)
    assert due.send_at == NOW + 5 * MINUTE
    assert due.status_reason == (
        f"template {PENDING} (hi) now REJECTED on WhatsApp platform IN: due, to be cancelled"
    )
    send(NOW + 5 * MINUTE)

    due.refresh_from_db()
    assert due.status == "cancelled"
    assert (
        due.status_reason
        == f"template {PENDING} (hi) is REJECTED on WhatsApp platform IN: not sent"
    )
    assert not RecordedMessage.objects.filter(payload__template=PENDING).exists()
    assert Delivery.objects.get(pk=messages["pending_en"].pk).status == "scheduled"


def test_an_approval_read_back_by_a_refresh_releases_the_held_messages_too(clock, held, graph):
    india, _, messages = held
    graph.get(
        f"https://graph.facebook.com/v21.0/{india.waba_id}/message_templates",
        json={
            "data": [
                {"name": PENDING, "language": "hi", "status": "APPROVED", "id": "801"},
                {"name": PENDING, "language": "en", "status": "PENDING", "id": "802"},
            ]
        },
    )
    clock.move_to(NOW + 5 * MINUTE)
    call_command(
        "manage_whatsapp_templates",
        *("--mode", "refresh", "--platform-ids", "IN", "--templates", PENDING),
        stdout=StringIO(),
        stderr=StringIO(),
    )
    assert Delivery.objects.get(pk=messages["pending_hi"].pk).send_at == NOW + 5 * MINUTE
    assert Delivery.objects.get(pk=messages["pending_en"].pk).send_at == (
        NOW + TEMPLATE_REVIEW_RETRY
    )


def upsert_finding_only(graph, platform, *present):
    """manage_whatsapp_templates --mode upsert of the pending reminder on the platform, with
    Meta's list holding only the given languages of it."""
    graph.get(
        f"https://graph.facebook.com/v21.0/{platform.waba_id}/message_templates",
        json={
            "data": [
                {"name": PENDING, "language": language, "status": "PENDING", "id": language}
                for language in present
            ]
        },
    )
    call_command(
        "manage_whatsapp_templates",
        *("--mode", "upsert", "--platform-ids", platform.label, "--templates", PENDING),
        stdout=StringIO(),
        stderr=StringIO(),
    )


def test_a_variant_an_upsert_finds_missing_and_cannot_resubmit_cancels_its_held_messages(
    clock, held, graph
):
    india, _, messages = held
    graph.post(
        f"https://graph.facebook.com/v21.0/{india.waba_id}/message_templates",
        status=400,
        json={"error": {"message": "Invalid parameter"}},
    )
    clock.move_to(NOW + 5 * MINUTE)
    with pytest.raises(CommandError, match="1 variant"):
        upsert_finding_only(graph, india, "en")

    due = Delivery.objects.get(pk=messages["pending_hi"].pk)
    assert due.send_at == NOW + 5 * MINUTE
    assert due.status_reason == (
        f"template {PENDING} (hi) now MISSING on WhatsApp platform IN: due, to be cancelled"
    )
    send(NOW + 5 * MINUTE)
    due.refresh_from_db()
    assert (due.status, due.status_reason) == (
        "cancelled",
        f"template {PENDING} (hi) is MISSING on WhatsApp platform IN: not sent",
    )
    # Still in Meta's list, in review: held as it was.
    assert Delivery.objects.get(pk=messages["pending_en"].pk).send_at == (
        NOW + TEMPLATE_REVIEW_RETRY
    )


def test_a_variant_an_upsert_resubmits_keeps_its_messages_held(clock, held, graph):
    india, _, messages = held
    graph.post(
        f"https://graph.facebook.com/v21.0/{india.waba_id}/message_templates",
        json={"id": "960", "status": "PENDING"},
    )
    clock.move_to(NOW + 5 * MINUTE)
    upsert_finding_only(graph, india, "en")

    assert (
        TemplateVariantStatus.objects.get(
            platform=india, template_name=PENDING, language="hi"
        ).status
        == "PENDING"
    )
    still = Delivery.objects.get(pk=messages["pending_hi"].pk)
    assert (still.status, still.send_at, still.status_reason) == (
        "scheduled",
        NOW + TEMPLATE_REVIEW_RETRY,
        messages["pending_hi"].status_reason,
    )


def test_a_status_still_in_review_keeps_the_messages_held(clock, held):
    india, _, messages = held
    clock.move_to(NOW + 5 * MINUTE)
    webhook(india, PENDING, "hi", "PAUSED", "tpl-paused")
    still = Delivery.objects.get(pk=messages["pending_hi"].pk)
    assert still.send_at == NOW + TEMPLATE_REVIEW_RETRY
    assert still.status_reason.endswith(": waiting for approval")


# --- 3. a second run the same day: "already emitted today" --------------------------------------


def test_a_second_run_the_same_day_counts_its_runs_as_already_emitted_today(clock):
    pending_run(), not_started_run(), idle_run()
    first = discover("--at", NOW.isoformat())
    assert row(first, "dispatched") == 3

    text = discover("--at", (NOW + HOUR).isoformat())
    summary = json.loads(discover("--at", (NOW + 2 * HOUR).isoformat(), "--json"))
    dry = json.loads(discover("--at", (NOW + 3 * HOUR).isoformat(), "--json", "--dry-run"))

    assert row(text, "already emitted today") == 3
    assert row(text, "skipped: not due (escalation)") == 0
    assert row(text, "dispatched") == 0
    for each in (summary, dry):
        assert (each["already_emitted"], each["skipped_not_due"], each["dispatched"]) == (3, 0, 0)
    dry_text = discover("--at", (NOW + 3 * HOUR).isoformat(), "--dry-run")
    assert row(dry_text, "already reminded today") == 3


@pytest.mark.parametrize("digest", [False, True], ids=["per_run", "digest"])
def test_a_run_waiting_for_its_escalation_day_is_still_not_due(digest):
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=digest)
    pending_run(age=3 * DAY)
    discover_reminders(now=NOW - DAY)  # day 1; the next step is day 3
    pending_run()  # reminded today below
    discover_reminders(now=NOW)

    again = discover_reminders(now=NOW + HOUR)

    assert (again["already_emitted"], again["skipped_not_due"], again["dispatched"]) == (1, 1, 0)
    outlook = reminder_outlook(now=NOW + HOUR)
    assert (outlook.reminded_today, outlook.waiting, outlook.due) == (1, 1, 0)


# --- 4. --at: the events are handled from that time ---------------------------------------------


def test_the_help_of_at_says_the_events_wait_for_that_time():
    parser = DiscoverCommand().create_parser("manage.py", "discover_reminders")
    at = next(action for action in parser._actions if "--at" in action.option_strings)
    assert "the dispatcher does not handle them before it" in at.help
    assert "no message is staged or sent until then" in at.help
    assert "for a day already over they are never sent" in at.help


def test_events_emitted_at_a_later_time_are_handled_only_from_that_time(clock):
    approve_all(PlatformFactory(label="IN"))
    pending_run()
    later = NOW + 2 * HOUR
    discover("--at", later.isoformat())

    assert set(EventHandling.objects.values_list("next_attempt_at", flat=True)) == {later}
    assert events.handle_due(now=NOW) == {"done": 0, "failed": 0, "gave_up": 0}
    assert not Delivery.objects.exists()

    clock.move_to(later)
    assert events.handle_due(now=later)["done"] == 1
    assert send(later).sent == 2


def test_events_emitted_for_a_day_already_over_expire_unsent(clock):
    approve_all(PlatformFactory(label="IN"))
    pending_run(age=3 * DAY)
    discover("--at", (NOW - DAY).isoformat())
    events.handle_due(now=NOW)
    send(NOW)
    assert set(Delivery.objects.values_list("status", flat=True)) == {"expired"}
    assert not RecordedMessage.objects.exists()


# --- 5. manage_whatsapp_templates: an option naming nothing is refused --------------------------


@pytest.fixture
def graph(settings):
    """Meta's Graph API faked at the HTTP layer; any call fails the test."""
    settings.WHATSAPP_GRAPH_URL = "https://graph.facebook.com/v21.0"
    settings.WHATSAPP_PLATFORM_TOKENS = "IN=token-in;AU=token-au"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.mark.parametrize(
    ("option", "value"),
    [("--platform-ids", ","), ("--templates", ","), ("--platform-ids", ""), ("--templates", " , ")],
)
@pytest.mark.parametrize("mode", ["dry-run", "upsert", "refresh"])
def test_a_list_option_naming_nothing_is_refused_and_changes_nothing(graph, option, value, mode):
    PlatformFactory(label="IN"), PlatformFactory(label="AU")
    with pytest.raises(CommandError, match=f"^{option} '{value}' names nothing: give"):
        call_command("manage_whatsapp_templates", "--mode", mode, option, value, stdout=StringIO())
    assert len(graph.calls) == 0
    assert not TemplateVariantStatus.objects.exists()


def test_a_list_option_left_out_still_means_all(graph):
    PlatformFactory(label="IN"), PlatformFactory(label="AU")
    out = StringIO()
    call_command("manage_whatsapp_templates", "--json", stdout=out, stderr=StringIO())
    items = json.loads(out.getvalue())["items"]
    assert {i["platform"] for i in items} == {"IN", "AU"}
    assert {i["template"] for i in items} == set(SPECS)
