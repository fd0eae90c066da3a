"""The demo world of `manage.py seed_demo` (issue 8): what it holds, that loading it twice
changes nothing, and that `make run` on an empty database shows the dashboard with it."""

from datetime import timedelta
from io import StringIO

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db.models import Count
from django.test import Client
from django.utils import timezone

from cadence.models import Persona, Stakeholder
from kiosks import health
from kiosks.models import Kiosk, Project
from notifications.models import (
    Customer,
    Delivery,
    DeliveryEvent,
    KillSwitch,
    MessageTemplate,
    ProposedAction,
    RecordedMessage,
    Workflow,
)
from notifications.trigger_models import TriggerWorkflow
from production_runs.discoverer import discover_reminders
from production_runs.models import Partner, ProductionRun

pytestmark = pytest.mark.django_db

APPS = ("notifications", "cadence", "kiosks", "production_runs")


def snapshot() -> dict[str, list]:
    """Every row of Herald's tables, as values: any change shows."""
    return {
        model._meta.label: sorted(
            (tuple(sorted(row.items())) for row in model.objects.values()), key=repr
        )
        for app in APPS
        for model in apps.get_app_config(app).get_models()
        if not model._meta.proxy
    }


def test_the_demo_world_holds_what_the_issue_asks_for():
    call_command("seed_demo", stdout=StringIO(), stderr=StringIO())
    now = timezone.now()

    customers = Customer.objects.all()
    assert customers.count() == 200
    assert customers.values("bid").distinct().count() >= 4
    assert customers.values("region").distinct().count() >= 5

    personas = {p.name: p.rules() for p in Persona.objects.all()}
    assert set(personas) == {"Manager", "Executive", "Technician"}
    assert len({(r.cooldown_hours, r.max_per_day) for r in personas.values()}) == 3
    assert Stakeholder.objects.count() == 30
    assert set(Stakeholder.objects.values_list("persona__name", flat=True)) == set(personas)

    assert Project.objects.count() == 5
    assert Kiosk.objects.count() == 60
    assert all(p.kiosks.count() == 12 for p in Project.objects.all())
    unhealthy = [k for k in Kiosk.objects.all() if health.issues_of(k, now=now)]
    assert 5 <= len(unhealthy) < 60

    assert Partner.objects.count() == 40
    assert set(Partner.objects.values_list("platform__label", flat=True)) == {"IN", "AU"}
    assert {"en", "hi"} <= set(Partner.objects.values_list("language", flat=True))
    assert ProductionRun.objects.count() == 150
    summary = discover_reminders(now=now, dry_run=True)
    assert all(count > 0 for count in summary["counts"].values()), summary["counts"]

    assert set(MessageTemplate.objects.values_list("channel", flat=True)) == {
        "email",
        "sms",
        "whatsapp",
    }
    assert TriggerWorkflow.objects.filter(is_active=True).count() == 2
    assert Workflow.objects.filter(type="batch_notify").exists()
    assert KillSwitch.objects.get(name="high_risk_ops").is_on is False

    # A few past deliveries with their tracking events, on every channel.
    kinds = set(DeliveryEvent.objects.values_list("kind", flat=True))
    assert {"sent", "delivered", "opened", "clicked", "bounced", "failed"} <= kinds
    assert set(Delivery.objects.values_list("channel", flat=True)) == {"email", "sms", "whatsapp"}
    tracked = Delivery.objects.filter(status__in=["delivered", "opened", "clicked", "bounced"])
    assert tracked.count() >= 4
    assert all(d.events.filter(provider_event_id__startswith="demo-").exists() for d in tracked)

    # Batches waiting for a person: one at its HITL gate, one in per-recipient review.
    pending = dict(
        ProposedAction.objects.filter(status="pending")
        .values_list("action_type")
        .annotate(n=Count("id"))
    )
    assert pending["workflow_batch_notify"] == 1 and pending["hitl_review"] > 0
    assert not RecordedMessage.objects.exists()  # history is recorded, nothing is sent


@pytest.mark.parametrize("later", [timedelta(0), timedelta(hours=5)])
def test_seeding_twice_changes_nothing(later):
    at = timezone.now().replace(microsecond=0)
    call_command("seed_demo", "--at", at.isoformat(), stdout=StringIO(), stderr=StringIO())
    first = snapshot()
    out = StringIO()
    again = (at + later).isoformat()
    call_command("seed_demo", "--at", again, stdout=out, stderr=StringIO())
    assert snapshot() == first
    assert "demo data ready (0 rows added)" in out.getvalue()


def test_seed_demo_reports_progress_on_stderr_and_counts_on_stdout():
    out, err = StringIO(), StringIO()
    call_command("seed_demo", stdout=out, stderr=err)
    assert "[1/6]" in err.getvalue() and "[6/6] done in" in err.getvalue()
    assert "   200  customers across bids and regions" in out.getvalue()
    assert "     1  the schedule that keeps the demo kiosks reporting" in out.getvalue()


def test_the_demo_and_only_the_demo_keeps_its_kiosks_reporting():
    from celery import current_app
    from django_celery_beat.models import PeriodicTask

    from config.schedules import setup_schedules

    setup_schedules()  # what make run does first: the demo's schedule is not among these
    assert not PeriodicTask.objects.filter(task="herald.demo_kiosk_heartbeats").exists()
    call_command("seed_demo", stdout=StringIO(), stderr=StringIO())
    task = PeriodicTask.objects.get(task="herald.demo_kiosk_heartbeats")
    assert (task.enabled, task.interval.every) == (True, 180)
    assert "herald.demo_kiosk_heartbeats" in current_app.tasks


def test_make_run_on_an_empty_database_shows_the_dashboard_with_demo_data(settings):
    """What `make run` does after migrating: seed_demo --if-empty, ensure_dev_superuser,
    then staff open /admin/."""
    settings.DEBUG = True  # ensure_dev_superuser is for development only
    call_command("seed_demo", "--if-empty", stdout=StringIO(), stderr=StringIO())
    call_command("ensure_dev_superuser", stdout=StringIO())
    client = Client()
    assert client.login(username="admin", password="admin")

    page = client.get("/admin/").content.decode()

    now = timezone.now()
    kiosks = Kiosk.objects.count()
    offline = Kiosk.objects.filter(health.offline_filter(now)).count()
    assert f"{kiosks} kiosks: <strong>{offline}</strong> offline" in page
    week_start = (now - timedelta(days=6)).replace(hour=0, minute=0, second=0, microsecond=0)
    week = Delivery.objects.filter(created_at__gte=week_start).count()
    assert week > 0 and f"Deliveries, last 7 days ({week})" in page
    assert "high_risk_ops</a>: off" in " ".join(page.split())
    assert "hitl_review" in page and "<svg" in page

    # A second `make run` leaves the data alone.
    out = StringIO()
    call_command("seed_demo", "--if-empty", stdout=out, stderr=StringIO())
    assert "demo data not loaded" in out.getvalue()
    assert get_user_model().objects.count() == 1


def test_if_empty_looks_at_data_not_at_user_accounts(settings):
    """A database with only a createsuperuser account got no demo; one with the demo but no
    user got it again."""
    get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    out = StringIO()
    call_command("seed_demo", "--if-empty", stdout=out, stderr=StringIO())
    assert "demo data ready" in out.getvalue()
    assert Kiosk.objects.exists()


def test_the_development_superuser_prints_a_password_only_when_it_made_the_user(settings):
    settings.DEBUG = True
    settings.SITE_URL = "http://127.0.0.1:8085"
    made = StringIO()
    call_command("ensure_dev_superuser", stdout=made)
    assert "Admin: http://127.0.0.1:8085/admin/  user: admin  password: admin" in made.getvalue()
    again = StringIO()
    call_command("ensure_dev_superuser", "--password", "other", stdout=again)
    assert "password" not in again.getvalue().replace("password unchanged", "")
    assert "user: admin (exists: password unchanged)" in again.getvalue()


def test_make_runs_superuser_step_says_debug_is_off_and_creates_nobody(settings):
    from django.core.management import CommandError

    settings.DEBUG = False
    out = StringIO()
    call_command("ensure_dev_superuser", "--if-debug", stdout=out)
    assert "refusing to create a development superuser with DEBUG off" in out.getvalue()
    assert not get_user_model().objects.exists()
    with pytest.raises(CommandError):
        call_command("ensure_dev_superuser", stdout=StringIO())


@pytest.mark.parametrize(
    "options, refusal",
    [
        (["--username", ""], "--username"),
        (["--username", "ad min"], "--username"),
        (["--password", ""], "--password"),
    ],
)
def test_ensure_dev_superuser_refuses_a_user_nobody_could_log_in_as(settings, options, refusal):
    """An empty user name (it was a traceback: "The given username must be set"), one that
    Django's user name validator refuses (it was created) or an empty password (created
    too, and the login form requires one) is a clear error, and nobody is created."""
    from django.core.management import CommandError

    settings.DEBUG = True
    with pytest.raises(CommandError, match=refusal):
        call_command("ensure_dev_superuser", *options, stdout=StringIO())
    assert not get_user_model().objects.exists()
