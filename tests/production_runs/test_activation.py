import pytest
from django.contrib.auth.models import Permission, User
from django_celery_beat.models import PeriodicTask

from config.schedules import SCHEDULES, setup_schedules
from production_runs.activation import (
    DISCOVER_TASK,
    GateClosed,
    activation_gate,
    schedule_disable,
    schedule_enable,
)
from production_runs.models import (
    EventTemplateMapping,
    ReminderSettings,
    ScheduleChange,
    TemplateVariantStatus,
)
from tests.production_runs.factories import NOW, PlatformFactory, approve_all

pytestmark = pytest.mark.django_db
GATE_URL = "/admin/production_runs/remindersettings/gate/"


@pytest.fixture
def schedule():
    setup_schedules(registered_tasks={spec.task for spec in SCHEDULES})
    return PeriodicTask.objects.get(task=DISCOVER_TASK)


@pytest.fixture
def platforms():
    return PlatformFactory(label="IN"), PlatformFactory(label="AU")


def failing(gate) -> dict[str, str]:
    return {check.label: check.detail for check in gate.checks if not check.ok}


def enabled() -> bool:
    return PeriodicTask.objects.get(task=DISCOVER_TASK).enabled


def test_the_schedule_starts_disabled_on_an_india_crontab(schedule):
    assert schedule.enabled is False
    assert str(schedule.crontab.timezone) == "Asia/Kolkata"
    assert (schedule.crontab.hour, schedule.crontab.minute) == ("10", "0")


def test_the_gate_names_every_variant_not_yet_approved(schedule, platforms):
    india, australia = platforms
    approve_all(india, australia)
    TemplateVariantStatus.objects.filter(
        platform=india, template_name="jyt_production_run_reminder_idle_v1", language="hi"
    ).update(status="PENDING")
    TemplateVariantStatus.objects.filter(
        platform=australia, template_name="jyt_production_run_design_v1"
    ).delete()

    gate = activation_gate()

    assert not gate.holds
    assert failing(gate) == {
        "templates approved on IN": "jyt_production_run_reminder_idle_v1 (hi): PENDING",
        "templates approved on AU": "jyt_production_run_design_v1 (en): MISSING",
    }


def test_the_gate_needs_the_reminder_mappings_live(schedule, platforms):
    approve_all(*platforms)
    EventTemplateMapping.objects.filter(event_name="production_run.reminder_idle").update(
        is_live=False
    )
    assert failing(activation_gate())["dispatcher mappings live"] == (
        "no live mapping to a known template for production_run.reminder_idle"
    )


def test_with_the_digest_on_the_gate_asks_for_the_digest_family(schedule, platforms):
    india, _ = platforms
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=True)
    TemplateVariantStatus.objects.create(
        platform=india,
        template_name="jyt_production_run_reminder_idle_v1",
        language="en",
        status="APPROVED",
    )
    details = failing(activation_gate())["templates approved on IN"]
    assert "jyt_production_run_digest_idle_v1 (hi): MISSING" in details
    assert "reminder_idle" not in details


def test_the_schedule_is_enabled_when_the_gate_holds(schedule, platforms):
    approve_all(*platforms)
    assert activation_gate().holds

    change = schedule_enable(by="asha", now=NOW)

    assert enabled()
    assert (change.by, change.enabled, change.gate_held, change.overridden) == (
        "asha",
        True,
        True,
        False,
    )


def test_the_schedule_stays_off_while_the_gate_does_not_hold(schedule, platforms):
    with pytest.raises(GateClosed, match="templates approved on IN"):
        schedule_enable(by="asha", now=NOW)
    assert not enabled() and not ScheduleChange.objects.exists()


def test_an_override_needs_the_permission_and_a_reason_and_is_audited(schedule, platforms):
    with pytest.raises(GateClosed, match="needs a reason"):
        schedule_enable(by="ops-lead", now=NOW, may_override=True, reason=" ")
    assert not enabled()

    change = schedule_enable(
        by="ops-lead", now=NOW, may_override=True, reason="smoke test with the internal partner"
    )

    assert enabled()
    assert (change.overridden, change.gate_held, change.at) == (True, False, NOW)
    assert change.reason == "smoke test with the internal partner"
    assert any(not check["ok"] for check in change.gate)


def test_disabling_is_the_rollback_and_is_audited(schedule, platforms):
    approve_all(*platforms)
    schedule_enable(by="asha", now=NOW)
    change = schedule_disable(by="asha", now=NOW, reason="partner complaints")
    assert not enabled()
    assert (change.enabled, change.reason) == (False, "partner complaints")
    assert schedule_disable(by="asha", now=NOW) is None


# --- through the admin ----------------------------------------------------------------------


def staff(*perms: str) -> User:
    user = User.objects.create_user("staffer", password="x", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def test_the_admin_gate_page_shows_each_check(admin_client, schedule, platforms):
    page = admin_client.get(GATE_URL).content.decode()
    assert "Activation gate" in page and "does not hold" in page
    assert "templates approved on IN" in page and "Asia/Kolkata" in page
    assert "Override the gate and enable" in page  # a superuser holds every permission


def test_staff_without_the_override_permission_cannot_enable_past_the_gate(
    client, schedule, platforms
):
    client.force_login(staff("view_remindersettings", "change_remindersettings"))
    page = client.get(GATE_URL).content.decode()
    assert "Override the gate" not in page

    response = client.post(GATE_URL, {"action": "override", "reason": "please"}, follow=True)

    assert not enabled()
    assert "Not enabled: the activation gate does not hold" in response.content.decode()
    assert not ScheduleChange.objects.exists()


def test_staff_with_the_override_permission_enable_it_and_are_recorded(client, schedule, platforms):
    client.force_login(
        staff("view_remindersettings", "change_remindersettings", "override_activation_gate")
    )
    confirm = client.post(GATE_URL, {"action": "override", "reason": "approved by phone"})
    assert "Enabling the reminder schedule although the activation gate does not hold" in (
        confirm.content.decode()
    )
    assert not enabled()  # nothing happens before the confirmation
    response = client.post(
        GATE_URL, {"action": "override", "reason": "approved by phone", "post": "yes"}
    )
    assert response.status_code == 302
    assert enabled()
    change = ScheduleChange.objects.get()
    assert (change.by, change.overridden, change.reason) == ("staffer", True, "approved by phone")


def test_the_admin_enables_without_override_once_the_gate_holds(admin_client, schedule, platforms):
    approve_all(*platforms)
    confirm = admin_client.post(GATE_URL, {"action": "enable"}).content.decode()
    assert "Enabling the reminder schedule runs the discoverer at" in confirm
    assert not enabled()
    admin_client.post(GATE_URL, {"action": "enable", "post": "yes"})
    assert enabled()
    assert ScheduleChange.objects.get().overridden is False


def test_a_digest_mapping_ticked_for_the_design_image_does_not_make_the_gate_ask_for_it(
    schedule, platforms
):
    """A digest is never followed by the design image (c60b74d refuses the tick on save); a
    row ticked before that must not make the gate require the image template."""
    india, australia = platforms
    approve_all(india, australia)
    ReminderSettings.objects.filter(pk=1).update(digest_enabled=True)
    EventTemplateMapping.objects.filter(event_name__startswith="production_run.digest_").update(
        send_design_image=True
    )
    TemplateVariantStatus.objects.filter(template_name="jyt_production_run_design_v1").delete()

    assert failing(activation_gate()) == {}
