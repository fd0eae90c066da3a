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


def test_online_demo_kiosks_keep_reporting_their_state_and_offline_ones_stay_quiet():
    demo.seed(NOW)
    later = NOW + timedelta(minutes=30)  # past the offline threshold without heartbeats
    before = {k.pk: k for k in Kiosk.objects.all()}
    online_then = {k.pk for k in before.values() if not health.is_offline(k, now=NOW)}
    for minute in range(0, 31):  # the schedule's every minute
        demo.keep_reporting(now=NOW + timedelta(minutes=minute))
    after = {k.pk: k for k in Kiosk.objects.all()}
    still_online = {pk for pk, k in after.items() if not health.is_offline(k, now=later)}
    assert still_online == online_then and 0 < len(online_then) < 60
    for pk in online_then:  # the same state, reported again
        assert health.issues_of(after[pk], now=later) == health.issues_of(before[pk], now=NOW)
        assert after[pk].last_heartbeat_at == later
    for pk in set(before) - online_then:
        assert after[pk].last_heartbeat_at == before[pk].last_heartbeat_at
