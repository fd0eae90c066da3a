"""Staff without the specific permission cannot launch, approve, override the cap, resume,
toggle the kill switch or activate the reminder schedule — via the admin or the endpoint."""

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from config.schedules import setup_schedules
from notifications import batch
from notifications.models import Delivery, KillSwitch, ProposedAction, WorkflowRun
from tests.notifications.factories import CustomerFactory

pytestmark = pytest.mark.django_db
VIEW_ALL = [
    "view_workflowrun",
    "change_workflowrun",
    "view_proposedaction",
    "change_proposedaction",
    "view_killswitch",
    "change_killswitch",
    "view_remindersettings",
]


def _staff(*extra) -> Client:
    user = User.objects.create_user("clerk", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=[*VIEW_ALL, *extra]))
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def run_waiting():
    mike = User.objects.create_superuser("mike", "m@example.com", "pw")
    CustomerFactory.create_batch(2)
    from django.utils import timezone

    run = batch.batch_launch(
        user=mike, cohort_filter="bid=B5875", subject="s", body_template="b", now=timezone.now()
    )
    return run


def _launch(client):
    return client.post(
        reverse("admin:batch_new"),
        {
            "customer_cohort_filter": "bid=B5875",
            "subject": "s",
            "body_template": "b",
            "_launch": "1",
        },
    )


def _approve(client, run):
    return client.post(
        reverse("admin:notifications_proposedaction_changelist"),
        {
            "action": "approve_selected",
            "_selected_action": [run.proposed_actions.get().id],
            "post": "yes",
        },
    )


def _override_cap(client):
    CustomerFactory.create_batch(51)
    return client.post(
        reverse("admin:batch_new"),
        {
            "customer_cohort_filter": "bid=B5875",
            "subject": "s",
            "body_template": "b",
            "max_recipients": "80",
            "_launch": "1",
        },
    )


def _resume_endpoint(client, run):
    WorkflowRun.objects.filter(id=run.id).update(status="aborted")
    return client.post(f"/admin/batch/resume?run_id={run.id}", HTTP_ACCEPT="application/json")


def _resume_action(client, run):
    WorkflowRun.objects.filter(id=run.id).update(status="aborted")
    return client.post(
        reverse("admin:notifications_workflowrun_changelist"),
        {"action": "resume_runs", "_selected_action": [run.id], "post": "yes"},
    )


def _kill_switch(client):
    switch = KillSwitch.objects.create(name="high_risk_ops", scope="high_risk_ops")
    return client.post(
        reverse("admin:notifications_killswitch_changelist"),
        {"action": "turn_on", "_selected_action": [switch.id], "post": "yes", "reason": "x"},
    )


def _activate(client):
    setup_schedules()
    return client.post(
        reverse("admin:production_runs_reminder_gate"), {"action": "override", "reason": "x"}
    )


def _nothing_happened(run):
    run.refresh_from_db()
    return (
        run.status in ("awaiting_approval", "aborted")
        and not Delivery.objects.exists()
        and ProposedAction.objects.filter(status="pending").count() == 1
        and not KillSwitch.objects.filter(is_on=True).exists()
        and not PeriodicTask.objects.filter(task="herald.discover_reminders", enabled=True).exists()
        and WorkflowRun.objects.count() == 1
    )


ALL_SPECIFIC = {
    "launch_batch",
    "decide_proposedaction",
    "override_recipient_cap",
    "resume_batch",
    "toggle_killswitch",
    "override_activation_gate",
    "change_remindersettings",
}


@pytest.mark.parametrize(
    "attempt, withheld",
    [
        (lambda c, r: _launch(c), {"launch_batch"}),
        (_approve, {"decide_proposedaction"}),
        (lambda c, r: _override_cap(c), {"override_recipient_cap"}),
        (_resume_endpoint, {"resume_batch"}),
        (_resume_action, {"resume_batch"}),
        (lambda c, r: _kill_switch(c), {"toggle_killswitch"}),
        (lambda c, r: _activate(c), {"override_activation_gate", "change_remindersettings"}),
    ],
    ids=[
        "launch",
        "approve",
        "cap override",
        "resume endpoint",
        "resume action",
        "kill switch",
        "schedule activation",
    ],
)
def test_without_the_permission_nothing_happens(run_waiting, attempt, withheld):
    # Staff who can see every screen and hold every other permission, but not this one.
    client = _staff(*(ALL_SPECIFIC - withheld))
    response = attempt(client, run_waiting)
    assert response.status_code in (200, 302, 403)
    assert _nothing_happened(run_waiting)


def test_with_the_permission_the_same_approve_goes_through(run_waiting):
    client = _staff("decide_proposedaction")
    _approve(client, run_waiting)
    assert run_waiting.proposed_actions.filter(action_type="hitl_review").count() == 2


def test_the_resume_endpoint_answers_403_without_the_permission(run_waiting):
    assert _resume_endpoint(_staff(), run_waiting).status_code == 403
    assert _resume_endpoint(_staff_with_resume(), run_waiting).status_code == 200


def _staff_with_resume():
    User.objects.filter(username="clerk").delete()
    return _staff("resume_batch")


def test_template_upsert_needs_its_permission(db):
    import responses

    from tests.production_runs.factories import PlatformFactory

    platform = PlatformFactory(label="IN")
    user = User.objects.create_user("clerk", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_whatsappplatform", "change_whatsappplatform"])
    )
    client = Client()
    client.force_login(user)
    url = reverse("admin:production_runs_whatsappplatform_changelist")
    with responses.RequestsMock() as graph:  # any call to Meta would fail the test
        response = client.post(
            url, {"action": "upsert_templates", "_selected_action": [platform.id], "post": "yes"}
        )
        assert len(graph.calls) == 0
    assert response.status_code in (200, 302)
    assert "upsert_templates" not in client.get(url).content.decode()
    user.user_permissions.add(Permission.objects.get(codename="submit_whatsapp_templates"))
    client.force_login(User.objects.get(id=user.id))
    assert "upsert_templates" in client.get(url).content.decode()
