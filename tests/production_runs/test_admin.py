import pytest
import responses

from notifications.models import Event
from production_runs.models import ProductionRun, ProgressUpdate, ReminderState, RunStatus
from tests.production_runs.factories import (
    DAY,
    NOW,
    PlatformFactory,
    RunFactory,
    idle_run,
    not_started_run,
    pending_run,
)

pytestmark = pytest.mark.django_db
RUNS = "/admin/production_runs/productionrun/"


@pytest.fixture
def runs(clock):
    flagged = pending_run(partner__name="Chronic Stitchers")
    ReminderState.objects.create(
        run=flagged,
        kind="assignment_pending",
        stalled_since=flagged.created_at,
        first_overdue_at=NOW - 40 * DAY,
        reminder_count=7,
        flagged_at=NOW - DAY,
    )
    return {
        "pending": flagged,
        "not_started": not_started_run(partner__name="Slow Starters"),
        "idle": idle_run(partner__name="Quiet Looms"),
        "fresh": pending_run(age=DAY / 2, partner__name="Fresh Prints"),
    }


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ("bucket=assignment_pending", "Chronic Stitchers", "Slow Starters"),
        ("bucket=not_started", "Slow Starters", "Quiet Looms"),
        ("bucket=idle", "Quiet Looms", "Fresh Prints"),
        ("bucket=none", "Fresh Prints", "Quiet Looms"),
        ("flagged=yes", "Chronic Stitchers", "Fresh Prints"),
        ("status=in_progress", "Quiet Looms", "Slow Starters"),
    ],
)
def test_the_run_list_filters_by_bucket_flag_and_status(admin_client, runs, query, shown, hidden):
    page = admin_client.get(f"{RUNS}?{query}").content.decode()
    assert shown in page and hidden not in page


def test_the_run_list_shows_bucket_reminders_and_the_ops_flag(admin_client, runs):
    page = admin_client.get(RUNS).content.decode()
    assert "Assignment pending" in page and "Not started" in page and "Idle" in page
    assert "call partner" in page
    assert admin_client.get(f"{RUNS}?q={runs['idle'].id}").status_code == 200


def test_the_run_page_shows_timestamps_read_only_and_takes_progress_updates(admin_client, runs):
    run = runs["idle"]
    url = f"{RUNS}{run.id}/change/"
    page = admin_client.get(url).content.decode()
    assert 'name="started_at"' not in page and 'name="created_at"' not in page
    response = admin_client.post(
        url,
        {
            "reference": "",
            "partner": run.partner_id,
            "design": run.design_id,
            "quantity": 250,
            "progress_updates-TOTAL_FORMS": 1,
            "progress_updates-INITIAL_FORMS": 0,
            "progress_updates-0-produced_quantity": 90,
            "progress_updates-0-at_0": "2026-11-23",
            "progress_updates-0-at_1": "04:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    run.refresh_from_db()
    assert run.produced_quantity == 90
    assert ProgressUpdate.objects.get(run=run).produced_quantity == 90


def test_the_send_action_emits_the_lifecycle_event(admin_client, clock):
    run = pending_run()
    ProductionRun.objects.filter(pk=run.pk).update(status=RunStatus.DRAFT)
    admin_client.post(RUNS, {"action": "send", "_selected_action": [run.pk]})
    assert Event.objects.get().name == "production_run.sent_to_partner"
    run.refresh_from_db()
    assert run.status == "sent_to_partner"


def test_remind_now_asks_first_then_emits(admin_client, runs):
    run = runs["not_started"]
    data = {"action": "remind_now", "_selected_action": [run.pk]}
    page = admin_client.post(RUNS, data).content.decode()
    assert "Send a reminder now for 1 run(s)" in page and not Event.objects.exists()
    page = admin_client.post(RUNS, {**data, "post": "yes"}, follow=True).content.decode()
    assert Event.objects.get().name == "production_run.reminder_not_started"
    assert f"1 reminder event(s) emitted (run {run.pk})." in page
    assert "still in Meta&#x27;s review waits for its approval" in page


def test_remind_now_says_which_runs_it_did_not_remind_and_why(admin_client, runs):
    done = RunFactory(status=RunStatus.COMPLETED)
    orphan = pending_run(partner=None)
    chosen = [done.pk, orphan.pk, runs["idle"].pk]
    data = {"action": "remind_now", "_selected_action": chosen, "post": "yes"}
    page = admin_client.post(RUNS, data, follow=True).content.decode()
    assert Event.objects.get().name == "production_run.reminder_idle"
    assert f"1 reminder event(s) emitted (run {runs['idle'].pk})." in page
    assert f"run {done.pk} is completed, not active" in page
    assert f"run {orphan.pk} has no partner to remind" in page


def test_the_dry_run_page_shows_the_bucket_counts_and_emits_nothing(admin_client, runs):
    page = admin_client.get("/admin/production_runs/remindersettings/dry-run/").content.decode()
    assert "Assignment pending" in page and "skipped: not overdue" in page
    assert "would be reminded" in page
    assert not Event.objects.exists()


def test_the_settings_list_opens_the_single_settings_row(admin_client):
    response = admin_client.get("/admin/production_runs/remindersettings/")
    assert response.status_code == 302 and response["Location"].endswith("/1/change/")
    page = admin_client.get(response["Location"]).content.decode()
    assert "Activation gate and schedule" in page and "Dry-run the discoverer" in page


def test_the_platform_plan_action_calls_nobody(admin_client):
    platform = PlatformFactory(label="IN")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as graph:
        page = admin_client.post(
            "/admin/production_runs/whatsappplatform/",
            {"action": "show_plan", "_selected_action": [platform.pk]},
        ).content.decode()
    assert len(graph.calls) == 0
    assert "jyt_production_run_reminder_idle_v1" in page and "create" in page


@pytest.mark.parametrize(
    "url",
    [
        "/admin/production_runs/partner/",
        "/admin/production_runs/design/",
        "/admin/production_runs/whatsappplatform/",
        "/admin/production_runs/templatevariantstatus/",
        "/admin/production_runs/eventtemplatemapping/",
        "/admin/production_runs/schedulechange/",
        "/admin/production_runs/productionrun/add/",
    ],
)
def test_every_admin_page_opens(admin_client, runs, url):
    assert admin_client.get(url).status_code == 200


def test_a_mapping_to_a_template_not_in_code_is_refused(admin_client):
    page = admin_client.post(
        "/admin/production_runs/eventtemplatemapping/add/",
        {
            "event_name": "production_run.reminder_extra",
            "template_name": "typo_v1",
            "is_live": "on",
        },
    ).content.decode()
    assert "No template &#x27;typo_v1&#x27; in code" in page


def test_a_mapping_to_a_template_its_event_cannot_fill_names_only_that(admin_client):
    page = admin_client.post(
        "/admin/production_runs/eventtemplatemapping/add/",
        {
            "event_name": "production_run.reminder_foo",
            "template_name": "jyt_production_run_digest_idle_v1",
            "is_live": "on",
        },
    )
    errors = page.context["adminform"].form.errors
    assert list(errors) == ["template_name"]
    assert len(errors["template_name"]) == 1
    assert "Pick a template whose variables the event provides" in errors["template_name"][0]
    assert "No template" not in page.content.decode()


def test_a_mapping_to_a_template_that_means_something_else_is_refused(admin_client):
    """reminder_idle → the "cancelled" message was saved, and the activation gate then
    showed it as a live reminder mapping: idle partners would have been told the run was
    cancelled."""
    from production_runs.dispatcher import restore_default_mappings
    from production_runs.models import EventTemplateMapping

    restore_default_mappings()
    idle = EventTemplateMapping.objects.get(event_name="production_run.reminder_idle")
    url = f"/admin/production_runs/eventtemplatemapping/{idle.pk}/change/"
    data = {"event_name": idle.event_name, "is_live": "on", "send_design_image": "on"}
    page = admin_client.post(url, {**data, "template_name": "jyt_production_run_cancelled_v1"})
    (error,) = page.context["adminform"].form.errors["template_name"]
    assert error.startswith(
        "jyt_production_run_cancelled_v1 does not say what production_run.reminder_idle means"
    )
    idle.refresh_from_db()
    assert idle.template_name == "jyt_production_run_reminder_idle_v1"
    kept = admin_client.post(url, {**data, "template_name": "jyt_production_run_reminder_idle_v1"})
    assert kept.status_code == 302


def test_a_digest_mapping_refuses_the_design_image_it_would_never_send(admin_client):
    """ "send design image" could be ticked on a production_run.digest_* mapping (in its form
    and in the list), and was saved, though a digest is never followed by the image."""
    from production_runs.dispatcher import restore_default_mappings
    from production_runs.models import EventTemplateMapping

    restore_default_mappings()
    digest = EventTemplateMapping.objects.get(event_name="production_run.digest_idle")
    url = f"/admin/production_runs/eventtemplatemapping/{digest.pk}/change/"
    data = {
        "event_name": digest.event_name,
        "template_name": digest.template_name,
        "is_live": "on",
        "send_design_image": "on",
    }
    page = admin_client.post(url, data)
    (error,) = page.context["adminform"].form.errors["send_design_image"]
    assert error.startswith("A digest is not followed by a design image")
    listed = admin_client.post(
        "/admin/production_runs/eventtemplatemapping/",
        {
            "form-TOTAL_FORMS": 1,
            "form-INITIAL_FORMS": 1,
            "form-0-id": digest.pk,
            "form-0-is_live": "on",
            "form-0-send_design_image": "on",
            "_save": "Save",
        },
    )
    assert "A digest is not followed by a design image" in listed.content.decode()
    digest.refresh_from_db()
    assert not digest.send_design_image
    del data["send_design_image"]
    assert admin_client.post(url, data).status_code == 302


def test_a_run_added_in_the_admin_starts_as_a_draft_sent_with_the_action(admin_client, clock):
    partner = pending_run().partner
    page = admin_client.post(
        f"{RUNS}add/",
        {
            "reference": "ERP-9",
            "partner": partner.pk,
            "status": RunStatus.SENT_TO_PARTNER,  # not offered: the send action emits the event
            "quantity": 10,
            "progress_updates-TOTAL_FORMS": 0,
            "progress_updates-INITIAL_FORMS": 0,
        },
    )
    assert page.status_code == 302
    run = ProductionRun.objects.get(reference="ERP-9")
    assert run.status == RunStatus.DRAFT
    assert not Event.objects.filter(payload__production_run_id=run.pk).exists()

    admin_client.post(RUNS, {"action": "send", "_selected_action": [run.pk]})
    run.refresh_from_db()
    assert run.status == RunStatus.SENT_TO_PARTNER
    assert Event.objects.filter(
        name="production_run.sent_to_partner", payload__production_run_id=run.pk
    ).exists()


def test_a_sent_run_keeps_its_partner(admin_client, clock):
    """Its partner was told of it; moved to another partner in the form, the new one was
    reminded the next day of a run nobody had assigned them."""
    from tests.production_runs.factories import PartnerFactory

    run = pending_run(partner__name="Told Co")
    other = PartnerFactory(name="Never Told Co")
    page = admin_client.get(f"{RUNS}{run.pk}/change/").content.decode()
    assert 'name="partner"' not in page and "Told Co" in page
    admin_client.post(
        f"{RUNS}{run.pk}/change/",
        {
            "reference": run.reference or "",
            "partner": other.pk,
            "quantity": run.quantity,
            "progress_updates-TOTAL_FORMS": 0,
            "progress_updates-INITIAL_FORMS": 0,
        },
    )
    run.refresh_from_db()
    assert run.partner.name == "Told Co"
    draft = RunFactory(status=RunStatus.DRAFT)
    page = admin_client.get(f"{RUNS}{draft.pk}/change/").content.decode()
    assert 'name="partner"' in page  # a draft's partner is still chosen freely
