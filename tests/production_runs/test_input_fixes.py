"""Bad input to production runs gets a clear error where it is given and changes nothing
(DESIGN invariant 6): reminder settings out of range, progress updates from the future or
above the ordered quantity, a bogus list filter, a partner number without its country code,
a WHATSAPP_PLATFORM_LANGUAGES the templates cannot serve; and the gate's confirmation page
says why a schedule it would enable sends nothing today."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django_celery_beat.models import PeriodicTask

from config.schedules import SCHEDULES, setup_schedules
from production_runs.activation import DISCOVER_TASK, activation_gate
from production_runs.discoverer import discover_reminders
from production_runs.models import (
    Partner,
    ProductionRun,
    ProgressUpdate,
    ReminderSettings,
)
from tests.production_runs.factories import (
    DAY,
    NOW,
    PlatformFactory,
    approve_all,
    idle_run,
    pending_run,
)

pytestmark = pytest.mark.django_db
RUNS = "/admin/production_runs/productionrun/"
SETTINGS_URL = "/admin/production_runs/remindersettings/1/change/"
GATE_URL = "/admin/production_runs/remindersettings/gate/"
PLATFORMS = "/admin/production_runs/whatsappplatform/"
IDLE = "jyt_production_run_reminder_idle_v1"


# --- 1. reminder settings have upper bounds -------------------------------------------------


def settings_form(**changes) -> dict:
    current = ReminderSettings.load()
    data = {
        "assignment_pending_hours": current.assignment_pending_hours,
        "not_started_hours": current.not_started_hours,
        "idle_hours": current.idle_hours,
        "escalation_days": current.escalation_days,
        "escalation_repeat_days": current.escalation_repeat_days,
        "flag_after_days": current.flag_after_days,
        "dedup_window_minutes": current.dedup_window_minutes,
    }
    return {**data, **changes}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("idle_hours", 100000000, "At most 8,760 hours (a year)"),
        ("idle_hours", 999999999999, "At most 8,760 hours (a year)"),
        ("assignment_pending_hours", 8761, "At most 8,760 hours (a year)"),
        ("not_started_hours", 10**7, "At most 8,760 hours (a year)"),
        ("escalation_repeat_days", 366, "At most 365 days (a year)"),
        ("escalation_days", "1,3,400", "At most 365 days (a year)"),
        ("dedup_window_minutes", 10**12, "At most 1,440 minutes (a day)"),
    ],
)
def test_a_reminder_setting_beyond_its_bound_is_refused_on_its_field(
    admin_client, field, value, message
):
    before = ReminderSettings.load()
    response = admin_client.post(SETTINGS_URL, settings_form(**{field: value}))
    assert response.status_code == 200  # the form again, not a redirect
    form = response.context["adminform"].form
    assert message in " ".join(form.errors[field])
    assert list(form.errors) == [field]
    after = ReminderSettings.load()
    assert getattr(after, field) == getattr(before, field)


def test_the_bounds_are_inclusive_and_every_page_opens_at_them(admin_client, clock):
    idle_run()
    refused = admin_client.post(SETTINGS_URL, settings_form(idle_hours=8761))
    assert refused.status_code == 200 and ReminderSettings.load().idle_hours == 72
    response = admin_client.post(
        SETTINGS_URL,
        settings_form(
            assignment_pending_hours=8760,
            not_started_hours=8760,
            idle_hours=8760,
            escalation_days="1,365",
            escalation_repeat_days=365,
            dedup_window_minutes=1440,
        ),
    )
    assert response.status_code == 302
    assert ReminderSettings.load().idle_hours == 8760
    run = ProductionRun.objects.get()
    for url in (
        RUNS,
        f"{RUNS}{run.pk}/change/",
        "/admin/production_runs/remindersettings/dry-run/",
    ):
        assert admin_client.get(url).status_code == 200, url
    assert discover_reminders(now=NOW, dry_run=True)["counts"]["idle"] == 0


def test_settings_saved_beyond_the_bounds_before_them_are_brought_within_them():
    from importlib import import_module

    from django.apps import apps

    ReminderSettings.load()
    ReminderSettings.objects.filter(pk=1).update(
        idle_hours=100000000,
        assignment_pending_hours=2_000_000_000,  # PostgreSQL's integer holds up to 2**31 - 1
        escalation_repeat_days=10**6,
        dedup_window_minutes=2_000_000_000,
    )
    migration = import_module("production_runs.migrations.0005_reminder_settings_bounds")
    migration.clamp_reminder_settings(apps, None)
    settings = ReminderSettings.load()
    assert (
        settings.idle_hours,
        settings.assignment_pending_hours,
        settings.not_started_hours,
        settings.escalation_repeat_days,
        settings.dedup_window_minutes,
    ) == (8760, 8760, 24, 365, 1440)
    discover_reminders(now=NOW, dry_run=True)  # no OverflowError


# --- 2. progress updates: not from the future, not above the ordered quantity --------------


def progress_form(run, *, produced, day="2026-11-23", time="04:00:00", quantity=None) -> dict:
    return {
        "reference": "",
        "partner": run.partner_id,
        "design": run.design_id,
        "quantity": run.quantity if quantity is None else quantity,
        "progress_updates-TOTAL_FORMS": 1,
        "progress_updates-INITIAL_FORMS": 0,
        "progress_updates-0-produced_quantity": produced,
        "progress_updates-0-at_0": day,
        "progress_updates-0-at_1": time,
    }


def inline_errors(response) -> str:
    return " ".join(
        " ".join(f.errors.get(name, []))
        for f in response.context["inline_admin_formsets"][0].formset.forms
        for name in ("at", "produced_quantity")
    )


def test_a_progress_update_from_the_future_is_refused_on_its_time(admin_client, clock):
    run = idle_run()
    url = f"{RUNS}{run.pk}/change/"
    response = admin_client.post(url, progress_form(run, produced=90, day="2027-01-01"))
    assert response.status_code == 200
    assert "is in the future" in inline_errors(response)
    assert not ProgressUpdate.objects.exists()
    run.refresh_from_db()
    assert run.produced_quantity == 0
    # Still idle: the refused update did not silence its reminders.
    assert discover_reminders(now=NOW, dry_run=True)["counts"]["idle"] == 1
    # A few minutes ahead (NOW is 04:30 UTC, the admin writes UTC) is clock skew: taken.
    response = admin_client.post(url, progress_form(run, produced=90, time="04:34:00"))
    assert response.status_code == 302
    assert ProgressUpdate.objects.get().produced_quantity == 90


def test_a_produced_quantity_above_the_ordered_quantity_is_refused(admin_client, clock):
    run = idle_run(quantity=100)
    url = f"{RUNS}{run.pk}/change/"
    response = admin_client.post(url, progress_form(run, produced=500))
    assert response.status_code == 200
    assert "500 is more than the 100 pieces ordered" in inline_errors(response)
    assert not ProgressUpdate.objects.exists()
    run.refresh_from_db()
    assert run.produced_quantity == 0
    # Raising the ordered quantity in the same save lets a larger update through.
    response = admin_client.post(url, progress_form(run, produced=120, quantity=150))
    assert response.status_code == 302
    run.refresh_from_db()
    assert (run.quantity, run.produced_quantity) == (150, 120)


def test_the_ordered_quantity_cannot_drop_below_what_is_produced(admin_client, clock):
    run = idle_run(quantity=250)
    ProductionRun.objects.filter(pk=run.pk).update(produced_quantity=200)
    data = progress_form(run, produced=0, quantity=100)
    data["progress_updates-TOTAL_FORMS"] = 0
    response = admin_client.post(f"{RUNS}{run.pk}/change/", data)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["quantity"]
    assert "200 pieces are already produced" in " ".join(errors)
    run.refresh_from_db()
    assert run.quantity == 250


# --- 3. a bogus bucket filter is ignored ----------------------------------------------------


def test_a_bogus_bucket_filter_value_is_ignored(admin_client, clock):
    pending_run(partner__name="Chronic Stitchers")
    response = admin_client.get(f"{RUNS}?bucket=bogus")
    assert response.status_code == 200
    assert "Chronic Stitchers" in response.content.decode()


# --- 4. the partner's WhatsApp number is explained in Herald's words ------------------------


def test_a_partner_number_without_country_code_is_explained(admin_client):
    response = admin_client.post(
        "/admin/production_runs/partner/add/",
        {"name": "Rajesh Prints", "whatsapp_number": "9876543210", "language": ""},
    )
    assert response.status_code == 200
    errors = " ".join(response.context["adminform"].form.errors["whatsapp_number"])
    assert "needs + and the country code (e.g. +14155550100)" in errors
    assert "Missing or invalid default region" not in errors
    assert not Partner.objects.exists()


# --- 5. WHATSAPP_PLATFORM_LANGUAGES the templates cannot serve ------------------------------


def manage(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("manage_whatsapp_templates", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_languages_without_a_template_variant_are_named_per_platform(settings):
    PlatformFactory(label="IN"), PlatformFactory(label="AU")
    settings.WHATSAPP_PLATFORM_LANGUAGES = "IN=en,fr;AU=de"
    out, err = manage("--templates", IDLE)
    assert f"IN: no fr variant of {IDLE} (it has en, hi): fr is left out" in err
    assert f"AU: no de variant of {IDLE} (it has en, hi): AU gets no variant" in err
    assert "planned 1 variant(s) on 2 platform(s)" in err
    assert "IN" in out and "AU " not in out


def test_a_malformed_platform_languages_setting_is_a_one_line_command_error(settings):
    PlatformFactory(label="IN")
    settings.WHATSAPP_PLATFORM_LANGUAGES = "garbage"
    with pytest.raises(CommandError) as error:
        manage()
    message = str(error.value)
    assert "\n" not in message
    assert "WHATSAPP_PLATFORM_LANGUAGES" in message and "IN=en,hi" in message


def test_a_language_that_is_no_language_code_is_refused(settings):
    PlatformFactory(label="IN")
    settings.WHATSAPP_PLATFORM_LANGUAGES = "IN=english"
    with pytest.raises(CommandError, match="'english' is not a language code"):
        manage()


@pytest.fixture
def schedule():
    setup_schedules(registered_tasks={spec.task for spec in SCHEDULES})
    return PeriodicTask.objects.get(task=DISCOVER_TASK)


def test_the_gate_does_not_hold_for_a_platform_whose_languages_have_no_variant(settings, schedule):
    australia = PlatformFactory(label="AU")
    approve_all(australia)
    assert activation_gate().holds
    settings.WHATSAPP_PLATFORM_LANGUAGES = "AU=de"
    checks = {c.label: c for c in activation_gate().checks}
    assert not checks["templates approved on AU"].ok
    assert f"{IDLE}: no variant in de" in checks["templates approved on AU"].detail


def test_a_malformed_setting_fails_the_gate_and_the_platform_list_still_opens(
    admin_client, settings, schedule
):
    PlatformFactory(label="IN")
    settings.WHATSAPP_PLATFORM_LANGUAGES = "garbage"
    failing = {c.label: c.detail for c in activation_gate().checks if not c.ok}
    assert "WHATSAPP_PLATFORM_LANGUAGES" in failing.get("templates approved on IN", "")
    assert admin_client.get(GATE_URL).status_code == 200
    page = admin_client.get(PLATFORMS)
    assert page.status_code == 200
    assert "WHATSAPP_PLATFORM_LANGUAGES" in page.content.decode()


def test_the_platform_plan_action_names_the_language_problems(admin_client, settings):
    australia = PlatformFactory(label="AU")
    plan = {"action": "show_plan", "_selected_action": [australia.pk]}
    settings.WHATSAPP_PLATFORM_LANGUAGES = "AU=de"
    page = admin_client.post(PLATFORMS, plan, follow=True).content.decode()
    assert "AU: no de variant of any of the 10 templates" in page
    settings.WHATSAPP_PLATFORM_LANGUAGES = "garbage"
    response = admin_client.post(PLATFORMS, plan, follow=True)
    assert response.status_code == 200
    assert "WHATSAPP_PLATFORM_LANGUAGES: &#x27;garbage&#x27; is not like" in (
        response.content.decode()
    )


# --- 6. the gate's confirmation says why nothing would be sent today ------------------------


def test_the_enable_confirmation_says_the_stalled_runs_were_already_reminded_today(
    admin_client, clock, schedule
):
    platform = PlatformFactory(label="IN")
    approve_all(platform)
    pending_run(age=3 * DAY)
    discover_reminders(now=NOW - DAY)  # reminded yesterday: its next step is day 3
    pending_run(), pending_run(), idle_run(age=10 * DAY)
    discover_reminders(now=NOW)  # today's reminders are out
    pending_run()  # stalled, not reminded yet
    page = admin_client.post(GATE_URL, {"action": "enable"}).content.decode()
    assert (
        "5 stalled run(s) right now; 3 already reminded today, 1 waiting for a later "
        "escalation day, 1 due" in page
    )
    assert "it would send 1 WhatsApp reminder event(s) for 1 run(s)" in page


def test_recording_more_progress_than_ordered_is_refused_and_changes_nothing():
    from django.utils import timezone

    from production_runs.runs import RunStepRefused, run_record_progress
    from tests.production_runs.factories import RunFactory

    run = RunFactory(quantity=100, produced_quantity=10)
    with pytest.raises(RunStepRefused, match="500 is more than the 100 pieces ordered"):
        run_record_progress(run=run, produced_quantity=500, now=timezone.now())
    run.refresh_from_db()
    assert run.produced_quantity == 10 and not run.progress_updates.exists()


def test_a_malformed_platform_languages_setting_is_a_system_check_error(settings):
    from django.core import checks

    settings.WHATSAPP_PLATFORM_LANGUAGES = "garbage"
    errors = [e for e in checks.run_checks() if e.id == "production_runs.E002"]
    assert len(errors) == 1 and "WHATSAPP_PLATFORM_LANGUAGES: 'garbage' is not" in errors[0].msg
    settings.WHATSAPP_PLATFORM_LANGUAGES = "IN=en,hi;AU=en"
    assert not [e for e in checks.run_checks() if e.id == "production_runs.E002"]
