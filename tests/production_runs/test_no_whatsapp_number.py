"""A stalled run whose partner has no WhatsApp number cannot be reminded: it is not counted as
reminded, and the discoverer, its command and the admin say so and where to add the number."""

import json
from io import StringIO

import pytest
from django.core.management import call_command

from config.dashboard import reminders_this_week
from notifications import events
from notifications.models import Event
from production_runs.activation import reminder_outlook
from production_runs.discoverer import discover_reminders
from production_runs.models import ReminderSettings, ReminderState
from production_runs.runs import RunStepRefused, run_remind_now
from tests.production_runs.factories import (
    DAY,
    NOW,
    PartnerFactory,
    PlatformFactory,
    approve_all,
    pending_run,
)

pytestmark = pytest.mark.django_db
RUNS = "/admin/production_runs/productionrun/"


@pytest.fixture
def platform():
    platform = PlatformFactory(label="IN")
    approve_all(platform)
    return platform


@pytest.fixture
def numberless(platform):
    return PartnerFactory(name="Rajesh Textiles", whatsapp_number="", platform=platform)


def test_a_run_of_a_partner_without_a_number_is_not_reminded_nor_counted(numberless):
    run = pending_run(partner=numberless)
    reachable = pending_run()

    summary = discover_reminders(now=NOW)

    assert summary["counts"]["assignment_pending"] == 2
    assert summary["dispatched"] == 1 and summary["skipped_no_whatsapp_number"] == 1
    assert summary["no_whatsapp_number"] == [
        {
            "partner": numberless.id,
            "partner_name": "Rajesh Textiles",
            "runs": [run.id],
            "add_number_at": f"/admin/production_runs/partner/{numberless.id}/change/",
        }
    ]
    assert list(Event.objects.values_list("payload__production_run_id", flat=True)) == [
        reachable.id
    ]
    assert not ReminderState.objects.filter(run=run).exists()


def test_once_the_number_is_added_the_run_is_reminded_at_the_next_run(numberless):
    run = pending_run(partner=numberless)
    discover_reminders(now=NOW)
    numberless.whatsapp_number = "+919876500000"
    numberless.save()

    summary = discover_reminders(now=NOW + DAY)

    assert summary["dispatched"] == 1 and summary["skipped_no_whatsapp_number"] == 0
    assert ReminderState.objects.get(run=run).reminder_count == 1


def test_with_the_digest_on_a_partner_without_a_number_gets_no_digest(numberless):
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=True)
    pending_run(partner=numberless)
    pending_run(partner=numberless)

    summary = discover_reminders(now=NOW)

    assert summary["events"] == 0 and summary["skipped_no_whatsapp_number"] == 2
    assert not Event.objects.exists() and not ReminderState.objects.exists()


def test_the_command_says_who_could_not_be_reminded_and_where_to_add_the_number(numberless):
    run = pending_run(partner=numberless)
    out = StringIO()
    call_command("discover_reminders", "--at", NOW.isoformat(), stdout=out, stderr=StringIO())
    text = out.getvalue()
    assert "not reminded: no WhatsApp number" in text
    assert (
        f"partner {numberless.id} (Rajesh Textiles) could not be reminded of run(s) {run.id}: "
        "it has no WhatsApp number" in text
    )
    assert f"/admin/production_runs/partner/{numberless.id}/change/" in text

    out = StringIO()
    call_command(
        "discover_reminders", "--at", NOW.isoformat(), "--json", stdout=out, stderr=StringIO()
    )
    summary = json.loads(out.getvalue())
    assert summary["skipped_no_whatsapp_number"] == 1
    assert summary["no_whatsapp_number"][0]["runs"] == [run.id]


def test_the_admin_says_the_run_cannot_be_reminded_and_links_to_the_partner(
    admin_client, numberless
):
    run = pending_run(partner=numberless)
    discover_reminders(now=NOW)
    link = f'href="/admin/production_runs/partner/{numberless.id}/change/"'

    listing = admin_client.get(RUNS).content.decode()
    page = admin_client.get(f"{RUNS}{run.id}/change/").content.decode()

    for html in (listing, page):
        assert "cannot be reminded: partner has no WhatsApp number" in html
        assert link in html
    assert ">no WhatsApp number</span>" in listing


def test_the_dry_run_page_lists_the_partners_without_a_number(admin_client, numberless):
    pending_run(partner=numberless, age=(NOW - NOW.replace(year=2020)) + DAY)
    html = admin_client.get("/admin/production_runs/remindersettings/dry-run/").content.decode()
    assert "would not be reminded: partner has no WhatsApp number" in html
    assert f'/admin/production_runs/partner/{numberless.id}/change/">add' in html


def test_remind_now_refuses_a_run_whose_partner_has_no_number(numberless):
    run = pending_run(partner=numberless)
    with pytest.raises(RunStepRefused, match="has no WhatsApp number"):
        run_remind_now(run=run, now=NOW, by="asha")
    assert not Event.objects.exists()


def test_the_dashboard_does_not_count_a_reminder_its_dispatcher_could_not_send(clock, numberless):
    """The number removed after the reminder was emitted: the dispatcher skips it, and the
    week's reminders by bucket do not count it."""
    run = pending_run(partner=numberless)
    numberless.whatsapp_number = "+919876500000"
    numberless.save()
    reached = pending_run()
    discover_reminders(now=NOW)
    numberless.whatsapp_number = ""
    numberless.save()
    events.handle_due(now=NOW)

    assert Event.objects.filter(payload__production_run_id=run.id).exists()
    assert reminders_this_week(NOW) == [("assignment_pending", 1)]
    assert reached.partner.whatsapp_number


def test_a_reminder_its_dispatcher_could_not_send_is_not_counted_as_reminded(clock, numberless):
    """The number removed between the discoverer and the dispatcher: the escalation step the
    discoverer counted is taken back, and the next day's run reminds the run again."""
    numberless.whatsapp_number = "+919876500000"
    numberless.save()
    run = pending_run(partner=numberless)
    discover_reminders(now=NOW)
    assert ReminderState.objects.get(run=run).reminder_count == 1
    numberless.whatsapp_number = ""
    numberless.save()

    events.handle_due(now=NOW)

    assert ReminderState.objects.get(run=run).reminder_count == 0
    numberless.whatsapp_number = "+919876500000"
    numberless.save()
    clock.move_to(NOW + DAY)
    assert discover_reminders(now=NOW + DAY)["dispatched"] == 1
    assert ReminderState.objects.get(run=run).reminder_count == 1


def test_a_digest_its_dispatcher_could_not_send_is_not_counted_as_reminded(clock, numberless):
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=True)
    numberless.whatsapp_number = "+919876500000"
    numberless.save()
    runs = [pending_run(partner=numberless), pending_run(partner=numberless)]
    discover_reminders(now=NOW)
    numberless.whatsapp_number = ""
    numberless.save()

    events.handle_due(now=NOW)

    counts = ReminderState.objects.filter(run__in=runs).values_list("reminder_count", flat=True)
    assert list(counts) == [0, 0]


def test_the_schedules_outlook_counts_the_runs_that_cannot_be_reminded(numberless):
    pending_run(partner=numberless)
    pending_run()

    outlook = reminder_outlook(now=NOW)

    assert (outlook.stalled, outlook.due, outlook.no_whatsapp_number) == (2, 1, 1)
    assert "1 cannot be reminded (partner without a WhatsApp number)" in outlook.describe()


@pytest.mark.parametrize("digest", [False, True], ids=["per_run", "digest"])
def test_a_reminded_run_whose_partner_lost_the_number_is_still_flagged_for_ops_on_day_7(
    platform, digest
):
    """Reminded on days 1 and 3, then the partner's number was removed: on day 7 (a
    reminder day) it cannot be reminded, but it is still stalled on day 7 of its reminders,
    and ops are told as for any other run (the dry run says so too)."""
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=digest)
    partner = PartnerFactory(whatsapp_number="+919876500000", platform=platform)
    run = pending_run(partner=partner)
    for day in (1, 3):
        discover_reminders(now=NOW + (day - 1) * DAY)
    partner.whatsapp_number = ""
    partner.save()

    dry = discover_reminders(now=NOW + 6 * DAY, dry_run=True)
    real = discover_reminders(now=NOW + 6 * DAY)

    assert (dry["flagged"], real["flagged"]) == (1, 1)
    assert real["skipped_no_whatsapp_number"] == 1 and real["dispatched"] == 0
    state = ReminderState.objects.get(run=run)
    assert (state.reminder_count, state.flagged_at) == (2, NOW + 6 * DAY)


def test_a_never_reminded_run_of_a_partner_without_a_number_has_no_state_to_flag(numberless):
    run = pending_run(partner=numberless)
    for day in range(1, 9):
        assert discover_reminders(now=NOW + (day - 1) * DAY)["flagged"] == 0
    assert not ReminderState.objects.filter(run=run).exists()


def test_the_dashboard_counts_the_runs_a_digest_reminded(clock, platform, numberless):
    """With the digest on, a partner's stalled runs are reminded by one digest event: the
    week's reminders by bucket count its runs (they said "No reminder emitted this week"),
    and leave out a digest its dispatcher skipped for want of a number."""
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=True)
    reached = PartnerFactory(whatsapp_number="+919876500001", platform=platform)
    pending_run(partner=reached)
    pending_run(partner=reached)
    later_numberless = PartnerFactory(whatsapp_number="+919876500002", platform=platform)
    pending_run(partner=later_numberless)
    discover_reminders(now=NOW)
    later_numberless.whatsapp_number = ""
    later_numberless.save()
    events.handle_due(now=NOW)

    assert reminders_this_week(NOW) == [("assignment_pending", 2)]
