from datetime import timedelta

import pytest

from notifications import dispatch, events
from notifications.dispatch import ManualClock
from notifications.models import Delivery, RecordedMessage
from production_runs.discoverer import discover_reminders
from production_runs.models import ReminderSettings, TemplateStatus, TemplateVariantStatus
from production_runs.runs import run_record_progress, run_step
from production_runs.whatsapp_templates import record_status
from tests.notifications.factories import DeliveryFactory
from tests.production_runs.factories import (
    DAY,
    NOW,
    PlatformFactory,
    ProgressUpdateFactory,
    approve_all,
    idle_run,
    not_started_run,
    pending_run,
)

pytestmark = pytest.mark.django_db
LATER = NOW + timedelta(minutes=10)
REMINDER = "jyt_production_run_reminder_pending_v1"


@pytest.fixture
def platform():
    platform = PlatformFactory(label="IN")
    approve_all(platform)
    return platform


def stage(now=NOW):
    """The discoverer finds the run and the dispatcher stages its messages (not sent yet)."""
    discover_reminders(now=now)
    events.handle_due(now=now)


def send(now):
    return dispatch.dispatch_due(now=now, clock=ManualClock(now))


# --- still stalled at send time --------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "move", "reason"),
    [
        (pending_run, lambda run: run_step(run=run, step="accept", now=NOW), "accepted"),
        (not_started_run, lambda run: run_step(run=run, step="start", now=NOW), "started"),
        (
            idle_run,
            lambda run: run_record_progress(run=run, produced_quantity=40, now=NOW),
            "progressed",
        ),
        (pending_run, lambda run: run_step(run=run, step="cancel", now=NOW), "cancelled"),
    ],
    ids=["accepted", "started", "progressed", "cancelled"],
)
def test_a_reminder_whose_run_moved_on_before_sending_is_cancelled_with_why(
    clock, platform, make, move, reason
):
    run = make(partner__language="en")
    stage()
    move(run)

    clock.move_to(LATER)
    report = send(LATER)

    reminder = Delivery.objects.exclude(payload__template="jyt_production_run_design_v1").get()
    assert reminder.status == "cancelled"
    assert reminder.status_reason == f"run moved on: {reason}"
    image = Delivery.objects.get(payload__template="jyt_production_run_design_v1")
    assert image.status == "cancelled"
    assert not RecordedMessage.objects.exists()
    assert report.cancelled >= 2


def test_a_reminder_whose_run_is_still_stalled_is_sent(clock, platform):
    pending_run()
    stage()
    clock.move_to(LATER)
    assert send(LATER).sent == 2
    assert RecordedMessage.objects.count() == 2


@pytest.mark.parametrize(("accepted", "status"), [(1, "sent"), (2, "cancelled")])
def test_a_digest_is_cancelled_only_when_every_run_in_it_moved_on(
    clock, platform, accepted, status
):
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=True)
    first = pending_run()
    runs = [first, pending_run(partner=first.partner)]
    stage()
    for run in runs[:accepted]:
        run_step(run=run, step="accept", now=NOW)
    send(LATER)
    digest = Delivery.objects.get()
    assert digest.status == status
    if status == "cancelled":
        assert digest.status_reason.startswith("every run in the digest moved on")


# --- template variant not approved on the platform -------------------------------------------


def test_a_template_in_review_holds_the_message_until_it_is_approved(clock, platform):
    TemplateVariantStatus.objects.filter(template_name=REMINDER, language="hi").update(
        status=TemplateStatus.PENDING
    )
    pending_run()
    stage()

    report = send(NOW)

    held = Delivery.objects.get(payload__template=REMINDER)
    assert held.status == "scheduled" and report.deferred >= 1
    assert held.status_reason == (
        f"template {REMINDER} (hi) is PENDING on WhatsApp platform IN: waiting for approval"
    )
    assert held.send_at == NOW + timedelta(minutes=30)
    assert not RecordedMessage.objects.filter(payload__template=REMINDER).exists()

    TemplateVariantStatus.objects.filter(template_name=REMINDER).update(
        status=TemplateStatus.APPROVED
    )
    clock.move_to(NOW + timedelta(minutes=31))
    send(NOW + timedelta(minutes=31))
    held.refresh_from_db()
    assert held.status == "sent"


@pytest.mark.parametrize("status", ["REJECTED", "DISABLED", "MISSING"])
def test_a_template_that_cannot_be_sent_on_the_platform_cancels_the_message(
    clock, platform, status
):
    TemplateVariantStatus.objects.filter(template_name=REMINDER, language="hi").update(
        status=status
    )
    pending_run()
    stage()
    send(NOW)
    blocked = Delivery.objects.get(payload__template=REMINDER)
    assert blocked.status == "cancelled"
    assert blocked.status_reason == (
        f"template {REMINDER} (hi) is {status} on WhatsApp platform IN: not sent"
    )
    assert not RecordedMessage.objects.filter(payload__template=REMINDER).exists()


def test_an_unrecorded_variant_counts_as_missing(clock):
    PlatformFactory(label="IN")  # no statuses at all
    pending_run()
    stage()
    send(NOW)
    assert "is MISSING on WhatsApp platform IN" in Delivery.objects.first().status_reason


def test_other_whatsapp_messages_are_not_held_by_the_template_check(clock, platform):
    other = DeliveryFactory(
        channel="whatsapp",
        address="+14155550100",
        payload={"template": "someone_elses_template", "phone_number_id": platform.phone_number_id},
        send_at=NOW,
    )
    send(NOW)
    other.refresh_from_db()
    assert other.status == "sent"


@pytest.mark.parametrize("digest", [False, True], ids=["reminder", "digest"])
def test_an_idle_run_with_old_progress_is_still_stalled_at_send_time(clock, platform, digest):
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=digest)
    run = idle_run(age=10 * DAY)
    ProgressUpdateFactory(run=run, at=NOW - 5 * DAY)
    stage()
    send(LATER)
    first = Delivery.objects.order_by("id").first()
    assert first.status == "sent", first.status_reason


# --- the design image follows its message ----------------------------------------------------

DESIGN = "jyt_production_run_design_v1"


def test_the_design_image_waits_for_its_held_message_and_follows_it(clock, platform):
    TemplateVariantStatus.objects.filter(template_name=REMINDER, language="hi").update(
        status=TemplateStatus.PENDING
    )
    pending_run()
    stage()

    send(NOW)

    image = Delivery.objects.get(payload__template=DESIGN)
    message = Delivery.objects.get(payload__template=REMINDER)
    assert image.status == "scheduled" and image.send_at == message.send_at
    assert image.status_reason.startswith(f"follows message {message.id}, which waits: ")
    assert not RecordedMessage.objects.exists()

    TemplateVariantStatus.objects.filter(template_name=REMINDER).update(
        status=TemplateStatus.APPROVED
    )
    clock.move_to(NOW + timedelta(minutes=31))
    send(NOW + timedelta(minutes=31))
    sent = RecordedMessage.objects.order_by("id").values_list("payload__template", flat=True)
    assert list(sent) == [REMINDER, DESIGN]


def test_the_design_image_of_a_message_that_will_not_be_sent_is_cancelled(clock, platform):
    TemplateVariantStatus.objects.filter(template_name=REMINDER, language="hi").update(
        status=TemplateStatus.PENDING
    )
    pending_run()
    stage()
    send(NOW)
    TemplateVariantStatus.objects.filter(template_name=REMINDER, language="hi").update(
        status=TemplateStatus.REJECTED
    )
    clock.move_to(NOW + timedelta(minutes=31))

    send(NOW + timedelta(minutes=31))

    message = Delivery.objects.get(payload__template=REMINDER)
    image = Delivery.objects.get(payload__template=DESIGN)
    assert message.status == image.status == "cancelled"
    assert image.status_reason.startswith(f"follows message {message.id}, which was not sent")
    assert not RecordedMessage.objects.exists()


def test_a_message_and_its_design_image_go_together_when_nothing_holds_them(clock, platform):
    pending_run()
    stage()
    send(NOW)
    sent = RecordedMessage.objects.order_by("id").values_list("payload__template", flat=True)
    assert list(sent) == [REMINDER, DESIGN]


def test_the_design_image_goes_right_after_its_held_message_once_the_template_is_approved(
    clock, platform
):
    """The approval releases the held reminder at once (release_held): its design image is
    released with it and follows it in the same dispatch, not up to 30 minutes later."""
    TemplateVariantStatus.objects.filter(template_name=REMINDER, language="hi").update(
        status=TemplateStatus.PENDING
    )
    pending_run()
    stage()
    send(NOW)
    assert not RecordedMessage.objects.exists()

    approved_at = NOW + timedelta(minutes=5)
    clock.move_to(approved_at)
    record_status(
        platform=platform,
        template=REMINDER,
        language="hi",
        status=TemplateStatus.APPROVED,
        now=approved_at,
    )
    send(approved_at)

    sent = RecordedMessage.objects.order_by("id").values_list("payload__template", flat=True)
    assert list(sent) == [REMINDER, DESIGN]
