from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone

from cadence.models import Persona, Stakeholder
from kiosks import demo, health
from kiosks.models import Kiosk, Project
from notifications.models import Delivery
from notifications.trigger_models import TriggerWorkflow
from notifications.triggers import evaluate_triggers

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_the_demo_world_is_created_once():
    assert demo.seed(NOW) > 0
    assert demo.seed(NOW) == 0
    personas = {p.name: p.rules() for p in Persona.objects.all()}
    assert set(personas) == {"Manager", "Executive", "Technician"}
    assert len({(r.cooldown_hours, r.max_per_day) for r in personas.values()}) == 3
    assert Stakeholder.objects.count() == 30
    assert Project.objects.count() == 5
    assert Kiosk.objects.count() == 60
    unhealthy = [k for k in Kiosk.objects.all() if health.issues_of(k, now=NOW)]
    assert 5 <= len(unhealthy) < 60
    assert TriggerWorkflow.objects.filter(is_active=True).count() == 2


def test_the_demo_world_fires_alerts_and_fills_the_admin_pages(admin_client):
    demo.seed(NOW)
    report = evaluate_triggers(now=NOW)
    assert report["contexts_fired"] >= 8
    assert report["deliveries_now"] + report["deliveries_queued"] > 0
    assert Delivery.objects.filter(context_key__startswith="kiosk_health_status:").exists()
    assert Delivery.objects.filter(context_key__startswith="morale_drop_baseline:").exists()
    with time_machine.travel(NOW, tick=False):
        assert timezone.now() == NOW
        dashboard = admin_client.get(reverse("kiosks_dashboard")).content.decode()
        assert "Docklands" in dashboard and "OFFLINE" in dashboard
        manager = Persona.objects.get(name="Manager")
        what_if = admin_client.get(
            reverse("cadence_simulator"), {"persona": manager.pk, "max_per_day": "1"}
        ).content.decode()
    assert "would have been held" in what_if


def test_the_demo_kiosks_keep_reporting_their_state_and_the_quiet_ones_stay_quiet():
    demo.seed(NOW)
    stranger = Kiosk.objects.create(
        project=Project.objects.get(name="Docklands"), name="Not the demo's", last_heartbeat_at=NOW
    )
    retired = Kiosk.objects.get(project__name="Hudson Yards", name="K-01")
    Kiosk.objects.filter(pk=retired.pk).update(is_active=False)
    before = {k.pk: k for k in Kiosk.objects.all()}
    online_then = {k.pk for k in before.values() if not health.is_offline(k, now=NOW)}
    # make run stopped for an hour: everything looks offline, then the schedule runs again
    back = NOW + timedelta(hours=1)
    assert all(health.is_offline(k, now=back) for k in before.values())
    for minutes in range(0, 31, 3):
        demo.keep_reporting(now=back + timedelta(minutes=minutes))
    later = back + timedelta(minutes=30)
    after = {k.pk: k for k in Kiosk.objects.all()}
    online_now = {pk for pk, k in after.items() if not health.is_offline(k, now=later)}
    assert online_now == online_then - {stranger.pk, retired.pk}
    assert 40 < len(online_now) < 60
    for pk in online_now:  # the same state, reported again
        assert health.issues_of(after[pk], now=later) == health.issues_of(before[pk], now=NOW)
        assert after[pk].last_heartbeat_at == later
    for pk in (stranger.pk, retired.pk):
        assert after[pk].last_heartbeat_at == before[pk].last_heartbeat_at
    quiet = Kiosk.objects.filter(name__in=["K-23", "K-48"])
    assert [k.last_heartbeat_at < NOW for k in quiet] == [True, True]
