"""Long-running commands say how far they are on stderr while --json keeps stdout parseable."""

import json
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import call_command

from notifications.models import Delivery
from tests.notifications.factories import DeliveryFactory
from tests.production_runs.factories import PlatformFactory, pending_run

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_dispatch_due_sends_in_rounds_and_reports_each(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    DeliveryFactory.create_batch(5, send_at=NOW - timedelta(minutes=1))
    DeliveryFactory(send_at=NOW + timedelta(hours=1))

    out, err = run("dispatch_due", "--at", NOW.isoformat(), "--round-size", "2", "--json")

    assert json.loads(out)["sent"] == 5
    assert "5 deliveries due at 2026-11-23 10:00:00" in err
    assert "… 2 handled of 5 due" in err and "… 4 handled of 5 due" in err
    assert "… 5 handled of 5 due: 5 sent" in err
    assert Delivery.objects.filter(status="scheduled").count() == 1


def test_dispatch_due_keeps_to_its_limit_across_rounds(settings):
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    DeliveryFactory.create_batch(5, send_at=NOW - timedelta(minutes=1))
    out, _ = run("dispatch_due", "--at", NOW.isoformat(), "--round-size", "2", "--limit", "3")
    assert "sent=3" in out
    assert Delivery.objects.filter(status="sent").count() == 3


def test_evaluate_triggers_reports_on_stderr():
    out, err = run("evaluate_triggers", "--at", NOW.isoformat(), "--json")
    assert json.loads(out)["workflows"] == 0
    assert "evaluating 0 active trigger workflow(s) at 2026-11-23 10:00" in err


def test_discover_reminders_says_how_many_runs_it_classifies():
    pending_run()
    _, err = run("discover_reminders", "--at", NOW.isoformat(), "--dry-run", "--json")
    assert "classifying 1 active run(s)" in err and "… 1 runs inspected of 1" in err


def test_manage_whatsapp_templates_reports_on_stderr():
    PlatformFactory(label="IN")
    out, err = run("manage_whatsapp_templates", "--json")
    assert json.loads(out)["mode"] == "dry-run"
    assert "variant(s) on 1 platform(s)" in err


def test_dispatch_due_does_not_count_more_handled_than_were_due(settings):
    from notifications.models import ProviderBreaker

    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    settings.SMS_BACKEND = "notifications.channels.recording.SMSChannel"
    ProviderBreaker.objects.create(provider="email:recording", state="open", opened_at=NOW)
    DeliveryFactory.create_batch(
        2, send_at=NOW, fallback_channel="sms", fallback_address="+14155550199"
    )

    out, err = run("dispatch_due", "--at", NOW.isoformat(), "--json")

    assert "2 deliveries due at 2026-11-23 10:00:00" in err
    assert Delivery.objects.filter(channel="sms", status="sent").count() == 2
    assert "handled of 2 due" not in err
    assert "… 4 handled (2 were due at the start; the others are fallbacks made, or rows " in err


def test_dispatch_due_progress_names_what_a_kill_switch_holds(settings):
    from notifications.models import KillSwitch

    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    KillSwitch.objects.create(name="stop email", scope="channel", channel="email", is_on=True)
    DeliveryFactory.create_batch(3, send_at=NOW)

    out, err = run("dispatch_due", "--at", NOW.isoformat(), "--json")

    assert json.loads(out)["frozen"] == 3
    assert "… 0 handled of 3 due: 0 sent, 0 failed, 0 retried, 0 deferred, 3 held by a kill " in err


def test_dispatch_due_progress_names_what_an_open_breaker_holds(settings):
    from notifications.models import KillSwitch, ProviderBreaker

    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    ProviderBreaker.objects.create(
        provider="sms:recording", state="open", opened_at=NOW, cooloff_seconds=300
    )
    KillSwitch.objects.create(name="stop email", scope="channel", channel="email", is_on=True)
    DeliveryFactory.create_batch(2, send_at=NOW)
    DeliveryFactory.create_batch(3, channel="sms", address="+14155550100", send_at=NOW)

    out, err = run("dispatch_due", "--at", NOW.isoformat(), "--json")

    assert (json.loads(out)["frozen"], json.loads(out)["breaker_held"]) == (2, 3)
    assert "… 0 handled of 5 due: 0 sent, 0 failed, 0 retried, 0 deferred, 2 held by a kill " in err
    assert "switch, 3 waiting for an open provider breaker (" in err


def test_dispatch_due_goes_on_after_a_breakers_successful_trial_call(settings):
    """The trial round moves one row, fewer than a round's size: the command took that for
    "nothing more is due" and left the other four, in no count."""
    from notifications.models import ProviderBreaker

    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    ProviderBreaker.objects.create(
        provider="email:recording",
        state="open",
        opened_at=NOW - timedelta(minutes=5),
        cooloff_seconds=60,
    )
    DeliveryFactory.create_batch(5, send_at=NOW)

    out, _ = run("dispatch_due", "--at", NOW.isoformat(), "--json")

    assert json.loads(out)["sent"] == 5
    assert ProviderBreaker.objects.get(provider="email:recording").state == "closed"
    assert not Delivery.objects.filter(status="scheduled").exists()
