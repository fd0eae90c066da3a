"""Admin actions that change something are offered only to staff who may change (or, for a
reset cooldown, delete) the rows: a user who may only view a list cannot cancel, retry,
reconcile, rotate a kiosk's token, move a production run, send a reminder or switch off a
periodic task by posting the action."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from cadence.models import TriggerCooldown
from notifications.models import Delivery
from tests.notifications.factories import DeliveryFactory

pytestmark = pytest.mark.django_db

# Actions a viewer still sees: a dry run, and those that check their own permission and say
# so (tests/reliability/test_permissions.py).
READ_ONLY_OR_SELF_CHECKED = {
    "show_plan",
    "turn_on",
    "turn_off",
    "resume_runs",
    "cancel_runs",
    "approve_selected",
    "reject_selected",
}


def _viewer() -> User:
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    return user


def test_a_viewer_is_offered_no_action_that_changes_rows():
    request = RequestFactory().get("/admin/")
    request.user = _viewer()
    offered = {
        f"{model._meta.label}.{name}"
        for model, model_admin in admin.site._registry.items()
        for name in model_admin.get_actions(request)
        if name not in READ_ONLY_OR_SELF_CHECKED and name != "delete_selected"
    }
    assert offered == set()


def test_an_editor_is_still_offered_them():
    user = User.objects.create_user("editor", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_delivery", "change_delivery"])
    )
    request = RequestFactory().get("/admin/")
    request.user = user
    actions = admin.site._registry[Delivery].get_actions(request)
    assert {"retry_failed", "cancel_scheduled", "reconcile_sent", "reconcile_failed"} <= set(
        actions
    )


def test_a_viewer_posting_cancel_changes_nothing():
    delivery = DeliveryFactory(status=Delivery.Status.SCHEDULED)
    client = Client()
    client.force_login(_viewer())
    client.post(
        reverse("admin:notifications_delivery_changelist"),
        {"action": "cancel_scheduled", "_selected_action": [delivery.id], "post": "yes"},
    )
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SCHEDULED


def test_a_viewer_cannot_reset_a_cooldown():
    now = timezone.now()
    cooldown = TriggerCooldown.objects.create(
        workflow_key="workflow:1", context_key="kiosk:1", last_sent_at=now, opened_at=now
    )
    client = Client()
    client.force_login(_viewer())
    client.post(
        reverse("admin:cadence_triggercooldown_changelist"),
        {"action": "reset_cooldown", "_selected_action": [cooldown.id], "post": "yes"},
    )
    assert TriggerCooldown.objects.filter(id=cooldown.id).exists()
