import logging
from datetime import timedelta

import pytest

from notifications import dispatch, events
from notifications.dispatch import ManualClock
from notifications.models import Delivery, Event, EventHandling, RecordedMessage
from production_runs.deeplink import read_token
from production_runs.discoverer import discover_reminders
from production_runs.models import EventTemplateMapping, ReminderSettings
from production_runs.runs import run_remind_now, run_step
from tests.production_runs.factories import (
    DAY,
    HOUR,
    NOW,
    AUPartnerFactory,
    PartnerFactory,
    PlatformFactory,
    ProgressUpdateFactory,
    RunFactory,
    approve_all,
    idle_run,
    not_started_run,
    pending_run,
)

pytestmark = pytest.mark.django_db
REMINDER_TEMPLATES = {
    "assignment_pending": "jyt_production_run_reminder_pending_v1",
    "not_started": "jyt_production_run_reminder_not_started_v1",
    "idle": "jyt_production_run_reminder_idle_v1",
}


@pytest.fixture(autouse=True)
def approved():
    approve_all(PlatformFactory(label="IN"), PlatformFactory(label="AU"))


def handle_and_send(now):
    """What the worker does after the discoverer: run the subscribers, then the outbox."""
    handled = events.handle_due(now=now, limit=1000)
    report = dispatch.dispatch_due(now=now, clock=ManualClock(now))
    return handled, report


def reminders():
    """The reminder template messages (not the design-image follow-ups)."""
    return Delivery.objects.filter(payload__template__in=list(REMINDER_TEMPLATES.values()))


# --- playbook step 2: no mapping, no message ------------------------------------------------


def test_without_template_mappings_the_dispatcher_skips_and_no_message_exists(clock, caplog):
    stalled = [pending_run(), not_started_run(), idle_run()]
    EventTemplateMapping.objects.filter(event_name__contains=".reminder_").delete()

    summary = discover_reminders(now=NOW)
    with caplog.at_level(logging.INFO, logger="production_runs.dispatcher"):
        handled, report = handle_and_send(NOW)

    assert summary["dispatched"] == len(stalled) and summary["failed"] == 0
    assert handled == {"done": 3, "failed": 0, "gave_up": 0}
    results = EventHandling.objects.filter(subscriber="production_runs.dispatcher")
    assert {h.event.name for h in results} == {
        "production_run.reminder_assignment_pending",
        "production_run.reminder_not_started",
        "production_run.reminder_idle",
    }
    assert all(h.result["skipped"] == "no_template_for_event" for h in results)
    assert caplog.text.count("no_template_for_event") == 3
    assert not Delivery.objects.exists() and not RecordedMessage.objects.exists()
    assert report.sent == 0


def test_a_mapping_that_is_not_live_counts_as_no_mapping(clock):
    pending_run()
    EventTemplateMapping.objects.filter(
        event_name="production_run.reminder_assignment_pending"
    ).update(is_live=False)
    discover_reminders(now=NOW)
    handle_and_send(NOW)
    assert EventHandling.objects.get().result["skipped"] == "no_template_for_event"
    assert not Delivery.objects.exists()


# --- playbook step 3: one message per stalled run, dedup, the next day -----------------------


def test_with_mappings_each_stalled_run_gets_one_reminder_of_its_bucket(clock):
    stalled = {pending_run(): "assignment_pending", not_started_run(): "not_started"}
    stalled[idle_run()] = "idle"
    pending_run(age=3 * HOUR)  # not overdue

    discover_reminders(now=NOW)
    handled, report = handle_and_send(NOW)

    assert handled["done"] == 3
    rows = list(reminders())
    assert len(rows) == len(stalled)
    for run, kind in stalled.items():
        row = reminders().get(context_key=f"production_run:{run.id}:reminder:2026-11-23")
        assert row.payload["template"] == REMINDER_TEMPLATES[kind]
        assert row.address == run.partner.whatsapp_number
        assert row.status == "sent" and row.provider_message_id
    # Each is followed by its design image with the signed portal link.
    assert Delivery.objects.filter(payload__template="jyt_production_run_design_v1").count() == 3
    assert report.sent == 6 and RecordedMessage.objects.count() == 6


def test_an_immediate_rerun_sends_nothing_new(clock):
    pending_run()
    not_started_run()
    discover_reminders(now=NOW)
    handle_and_send(NOW)
    sent = RecordedMessage.objects.count()

    clock.move_to(NOW + 5 * timedelta(minutes=1))
    again = discover_reminders(now=NOW + 5 * timedelta(minutes=1))
    handle_and_send(NOW + 5 * timedelta(minutes=1))

    assert again["dispatched"] == 0 and again["already_emitted"] == 2
    assert RecordedMessage.objects.count() == sent
    assert reminders().count() == 2


def test_a_replayed_reminder_within_the_window_leaves_a_dedup_marker_and_no_send(clock):
    run = pending_run()
    discover_reminders(now=NOW)
    handle_and_send(NOW)
    first = reminders().get()
    sent = RecordedMessage.objects.count()

    later = NOW + 20 * timedelta(minutes=1)
    clock.move_to(later)
    assert run_remind_now(run=run, now=later, by="ops")  # the bus replays today's reminder
    handled, report = handle_and_send(later)

    marker = reminders().exclude(pk=first.pk).get()
    assert marker.context_key == first.context_key == f"production_run:{run.id}:reminder:2026-11-23"
    assert marker.status == "skipped"
    assert marker.status_reason.startswith("dedup:")
    assert f"delivery {first.id}" in marker.status_reason
    assert marker.provider_message_id == "" and marker.sent_at is None
    assert list(marker.events.values_list("kind", flat=True)) == ["skipped"]
    assert RecordedMessage.objects.count() == sent and report.sent == 0
    assert EventHandling.objects.filter(status="done").last().result["deduplicated"] == first.id


def test_a_replay_after_the_dedup_window_is_sent(clock):
    run = pending_run()
    discover_reminders(now=NOW)
    handle_and_send(NOW)

    later = NOW + 61 * timedelta(minutes=1)
    clock.move_to(later)
    run_remind_now(run=run, now=later, by="ops")
    handle_and_send(later)

    assert list(reminders().order_by("id").values_list("status", flat=True)) == ["sent", "sent"]


def test_the_dedup_window_is_a_setting(clock):
    ReminderSettings.objects.filter(pk=1).update(dedup_window_minutes=180)
    run = pending_run()
    discover_reminders(now=NOW)
    handle_and_send(NOW)
    clock.move_to(NOW + 2 * HOUR)
    run_remind_now(run=run, now=NOW + 2 * HOUR, by="ops")
    handle_and_send(NOW + 2 * HOUR)
    assert reminders().filter(status="skipped").count() == 1


def test_the_next_day_sends_again_with_the_new_date_suffix(clock):
    # The seed's own cadence (every weekday) to show the per-day key; escalation is
    # tested in test_discoverer.
    ReminderSettings.objects.filter(pk=1).update(escalation_days="1", escalation_repeat_days=1)
    run = pending_run()
    discover_reminders(now=NOW)
    handle_and_send(NOW)

    clock.move_to(NOW + DAY)
    discover_reminders(now=NOW + DAY)
    handle_and_send(NOW + DAY)

    assert list(reminders().order_by("id").values_list("context_key", "status")) == [
        (f"production_run:{run.id}:reminder:2026-11-23", "sent"),
        (f"production_run:{run.id}:reminder:2026-11-24", "sent"),
    ]


# --- what the message says ------------------------------------------------------------------


def test_the_template_variables_are_names_ids_and_whole_days(clock):
    partner = PartnerFactory(name="Rajesh", language="en")
    run = pending_run(age=2 * DAY + 23 * HOUR, partner=partner, design__name="Block Print Kurta")
    discover_reminders(now=NOW)
    handle_and_send(NOW)
    row = reminders().get()
    assert row.payload["parameters"] == ["Rajesh", "Block Print Kurta", str(run.id), "2"]
    assert row.payload["language"] == "en"
    assert row.payload["phone_number_id"] == partner.platform.phone_number_id
    assert row.body.startswith(
        f"Hi Rajesh, a quick reminder — production run {run.id} for design Block Print Kurta"
    )
    assert "*Waiting since:* 2 day(s) ago" in row.body


def test_the_idle_reminder_shows_produced_and_total_quantity(clock):
    run = idle_run(partner__language="hi", quantity=250, produced_quantity=120)
    ProgressUpdateFactory(run=run, produced_quantity=120, at=NOW - 5 * DAY)
    discover_reminders(now=NOW)
    handle_and_send(NOW)
    row = reminders().get()
    assert row.payload["parameters"][3:] == ["120", "250"]
    assert "*प्रगति:* 250 में से 120 पीस पूरे" in row.body


def test_the_design_image_carries_the_raw_run_id_and_a_signed_portal_link(clock):
    run = not_started_run(
        partner__language="en", design__name="Ajrakh Scarf", design__image_url="https://cdn.x/a.jpg"
    )
    discover_reminders(now=NOW)
    handle_and_send(NOW)
    image = Delivery.objects.get(payload__template="jyt_production_run_design_v1")
    assert image.payload["header_image"] == "https://cdn.x/a.jpg"
    assert image.payload["parameters"] == [str(run.id), "Ajrakh Scarf"]
    assert ":reminder:" not in image.body and f"Run {run.id} " in image.body
    link = read_token(image.payload["button_url_suffix"])
    assert (link.run_id, link.partner_id) == (run.id, run.partner_id)
    sent = RecordedMessage.objects.get(payload__template="jyt_production_run_design_v1")
    assert sent.payload["header_image"] == "https://cdn.x/a.jpg"


def test_a_design_without_an_image_gets_no_image_message(clock):
    pending_run(design__image_url="")
    discover_reminders(now=NOW)
    handle_and_send(NOW)
    assert reminders().count() == 1
    assert not Delivery.objects.filter(payload__template="jyt_production_run_design_v1").exists()


@pytest.mark.parametrize(
    ("partner_fields", "payload_language", "expected"),
    [
        ({"language": "", "whatsapp_number": "+919876500001"}, "", "hi"),
        ({"language": "en", "whatsapp_number": "+919876500002"}, "", "en"),
        ({"language": "", "whatsapp_number": "+919876500003"}, "en", "en"),
    ],
    ids=["india-by-prefix", "saved-english", "explicit-option"],
)
def test_the_language_is_resolved_at_send_time(clock, partner_fields, payload_language, expected):
    run = pending_run(partner=PartnerFactory(**partner_fields))
    events.record_event(
        "production_run.reminder_assignment_pending",
        {
            "production_run_id": run.id,
            "partner_id": run.partner_id,
            "design_id": run.design_id,
            "reminder_kind": "assignment_pending",
            **({"language": payload_language} if payload_language else {}),
        },
        idempotency_key="manual-1",
        now=NOW,
    )
    handle_and_send(NOW)
    assert reminders().get().payload["language"] == expected


def test_a_partner_on_a_platform_without_hindi_gets_english(clock):
    pending_run(partner=AUPartnerFactory(language="hi"))
    discover_reminders(now=NOW)
    handle_and_send(NOW)
    row = reminders().get()
    assert row.payload["language"] == "en" and row.status == "sent"


# --- lifecycle events through the same dispatcher --------------------------------------------


def test_lifecycle_events_go_through_the_same_map(clock):
    run = RunFactory(status="draft", partner__language="en")
    run_step(run=run, step="send", now=NOW)
    run_step(run=run, step="accept", now=NOW)  # no lifecycle event
    handle_and_send(NOW)
    clock.move_to(NOW + HOUR)
    run_step(run=run, step="cancel", now=NOW + HOUR)
    handle_and_send(NOW + HOUR)

    rows = Delivery.objects.exclude(payload__template="jyt_production_run_design_v1")
    assert list(rows.order_by("id").values_list("payload__template", "context_key")) == [
        ("jyt_production_run_assigned_v1", f"production_run:{run.id}:sent_to_partner"),
        ("jyt_production_run_cancelled_v1", f"production_run:{run.id}:cancelled"),
    ]
    assert set(rows.values_list("status", flat=True)) == {"sent"}


def test_cancelling_a_run_never_sent_to_its_partner_tells_them_nothing(clock):
    run = RunFactory(status="draft", partner__language="en")
    assert run_step(run=run, step="cancel", now=NOW)
    handle_and_send(NOW)

    run.refresh_from_db()
    assert run.status == "cancelled"
    assert not Event.objects.filter(name="production_run.cancelled").exists()
    assert not Delivery.objects.exists()


def test_an_event_about_a_run_without_partner_is_skipped(clock):
    run = RunFactory(partner=None)
    events.record_event(
        "production_run.reminder_assignment_pending",
        {"production_run_id": run.id, "partner_id": None, "design_id": None},
        idempotency_key="orphan",
        now=NOW,
    )
    handle_and_send(NOW)
    assert EventHandling.objects.get().result["skipped"] == "no_partner"
    assert not Delivery.objects.exists()


def test_a_digest_is_one_message_listing_the_partners_runs(clock):
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=True)
    first = pending_run(partner__language="en", design__name="Ikat Shirt")
    second = pending_run(partner=first.partner, design__name="Khadi Trousers")
    discover_reminders(now=NOW)
    handle_and_send(NOW)
    row = Delivery.objects.get()
    assert row.payload["template"] == "jyt_production_run_digest_pending_v1"
    assert row.payload["parameters"] == [
        first.partner.name,
        "2",
        f"{first.id} (Ikat Shirt), {second.id} (Khadi Trousers)",
    ]
    assert (
        row.context_key == f"production_run_digest:{first.partner_id}:assignment_pending:2026-11-23"
    )
    assert row.status == "sent"


def test_a_reminder_handled_after_its_run_moved_on_stages_nothing(clock):
    run = idle_run()
    discover_reminders(now=NOW)
    clock.move_to(NOW + HOUR)
    ProgressUpdateFactory(run=run, at=NOW + HOUR)  # logged before the worker got to it

    handle_and_send(NOW + HOUR)

    result = EventHandling.objects.get().result
    assert result == {
        "skipped": "run_moved_on",
        "event": "production_run.reminder_idle",
        "reason": "run moved on: progressed",
    }
    assert not Delivery.objects.exists()
