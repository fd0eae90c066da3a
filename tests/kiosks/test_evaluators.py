from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from kiosks import evaluators
from tests.cadence.factories import StakeholderFactory
from tests.kiosks.factories import KioskFactory, MoraleResponseFactory, ProjectFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def kiosk(**state):
    return KioskFactory(**{"last_heartbeat_at": NOW - timedelta(minutes=1), **state})


def contexts(find):
    return {c.context_key: c for c in find(NOW)}


def test_health_status_names_kiosk_project_and_sorted_issues_and_lists_them_all():
    k = kiosk(charging=False, screen_state=False, battery_level=19)
    (context,) = contexts(evaluators.kiosk_health_status).values()
    assert context.context_key == (
        f"kiosk_health_status:{k.pk}:{k.project_id}:LOW_BATTERY,NOT_CHARGING,SCREEN_OFF"
    )
    assert context.variables["issues"] == ["LOW_BATTERY", "NOT_CHARGING", "SCREEN_OFF"]
    assert context.variables["issue_list"] == "low battery, not charging, screen off"
    assert context.issues == ("LOW_BATTERY", "NOT_CHARGING", "SCREEN_OFF")


def test_each_of_the_five_attributes():
    ok = kiosk(battery_level=20)  # 20 % is not below 20 %
    kiosk(charging=False)
    kiosk(screen_state=False)
    kiosk(battery_level=19)
    kiosk(last_heartbeat_at=NOW - timedelta(minutes=5, seconds=1))
    kiosk(connection_status=False)
    kiosk(mode="maintenance")  # not one of KIOSK_EXPECTED_MODES ("kiosk")
    fine = [kiosk(mode="kiosk"), kiosk(mode="")]  # the expected mode, or none reported
    found = sorted(c.context_key.rsplit(":", 1)[1] for c in evaluators.kiosk_health_status(NOW))
    assert found == ["LOW_BATTERY", "MODE", "NOT_CHARGING", "OFFLINE", "OFFLINE", "SCREEN_OFF"]
    for healthy in (ok, *fine):
        assert not any(f":{healthy.pk}:" in key for key in contexts(evaluators.kiosk_health_status))


def test_mode_follows_the_expected_modes_setting(settings):
    setup = kiosk(mode="setup")
    settings.KIOSK_EXPECTED_MODES = ["kiosk", "setup"]
    assert not contexts(evaluators.kiosk_health_status)
    settings.KIOSK_EXPECTED_MODES = []  # MODE never raised
    assert not contexts(evaluators.kiosk_health_status)
    settings.KIOSK_EXPECTED_MODES = ["kiosk"]
    (context,) = contexts(evaluators.kiosk_health_status).values()
    assert context.context_key == f"kiosk_health_status:{setup.pk}:{setup.project_id}:MODE"
    assert context.variables["issue_list"] == "in an unexpected mode"
    # Back in kiosk mode, the context has cleared.
    setup.mode = "kiosk"
    setup.save()
    assert evaluators.kiosk_health_cleared([context.context_key], NOW) == {context.context_key}


def test_offline_means_no_heartbeat_for_5_minutes_or_connection_lost():
    quiet = kiosk(last_heartbeat_at=NOW - timedelta(minutes=6))
    lost = kiosk(connection_status=False)
    kiosk(last_heartbeat_at=NOW - timedelta(minutes=4))
    found = contexts(evaluators.kiosk_offline)
    assert set(found) == {
        f"kiosk_offline:{quiet.pk}:{quiet.project_id}",
        f"kiosk_offline:{lost.pk}:{lost.project_id}",
    }
    assert found[f"kiosk_offline:{lost.pk}:{lost.project_id}"].variables["reason"] == (
        "connection lost"
    )


def test_a_new_kiosk_that_never_sent_a_heartbeat_gets_five_minutes():
    kiosk(last_heartbeat_at=None, created_at=NOW - timedelta(minutes=2))
    assert not contexts(evaluators.kiosk_offline)
    old = kiosk(last_heartbeat_at=None, created_at=NOW - timedelta(minutes=6))
    (context,) = contexts(evaluators.kiosk_offline).values()
    assert context.context_key == f"kiosk_offline:{old.pk}:{old.project_id}"
    assert context.variables["reason"] == "it has never sent a heartbeat"  # not "since never"


def test_inactive_kiosks_are_not_evaluated():
    kiosk(charging=False, is_active=False)
    assert not contexts(evaluators.kiosk_health_status)


def test_contexts_carry_the_projects_stakeholders():
    project = ProjectFactory()
    ann, ben = StakeholderFactory(), StakeholderFactory(is_active=False)
    project.stakeholders.add(ann, ben)
    kiosk(project=project, charging=False)
    (context,) = contexts(evaluators.kiosk_health_status).values()
    assert context.stakeholder_ids == frozenset({ann.pk})
    assert context.project_id == project.pk


def test_the_health_evaluator_reads_the_same_few_queries_for_any_number_of_kiosks():
    project = ProjectFactory()
    project.stakeholders.add(StakeholderFactory())
    for _ in range(3):
        kiosk(project=project, charging=False)
    with CaptureQueriesContext(connection) as few:
        list(evaluators.kiosk_health_status(NOW))
    for _ in range(40):
        kiosk(project=ProjectFactory(), charging=False)
    with CaptureQueriesContext(connection) as many:
        assert len(list(evaluators.kiosk_health_status(NOW))) == 43
    assert len(few) == len(many) == 2


def test_health_context_clears_when_none_of_its_issues_remains():
    k = kiosk(charging=False, battery_level=10)
    key = f"kiosk_health_status:{k.pk}:{k.project_id}:LOW_BATTERY,NOT_CHARGING"
    assert evaluators.kiosk_health_cleared([key], NOW) == set()
    k.charging = True
    k.save()
    assert evaluators.kiosk_health_cleared([key], NOW) == set()  # still low on battery
    k.battery_level = 80
    k.save()
    assert evaluators.kiosk_health_cleared([key], NOW) == {key}
    moved = f"kiosk_health_status:{k.pk}:{k.project_id + 1}:LOW_BATTERY"
    assert evaluators.kiosk_health_cleared([moved], NOW) == {moved}


def test_offline_context_clears_when_the_kiosk_is_back():
    k = kiosk(connection_status=False)
    key = f"kiosk_offline:{k.pk}:{k.project_id}"
    assert evaluators.kiosk_offline_cleared([key], NOW) == set()
    k.connection_status = True
    k.save()
    assert evaluators.kiosk_offline_cleared([key], NOW) == {key}


def _baseline(project, score=5, per_day=3):
    for day in range(1, 10):
        MoraleResponseFactory.create_batch(
            per_day, project=project, score=score, submitted_at=NOW - timedelta(days=day, hours=1)
        )


def test_morale_drop_fires_below_the_share_of_the_trailing_baseline():
    low, fine = ProjectFactory(name="Low"), ProjectFactory(name="Fine")
    for project in (low, fine):
        _baseline(project)
    MoraleResponseFactory.create_batch(
        3, project=low, score=3, submitted_at=NOW - timedelta(hours=2)
    )
    MoraleResponseFactory.create_batch(
        3, project=fine, score=5, submitted_at=NOW - timedelta(hours=2)
    )
    found = contexts(evaluators.morale_drop_baseline)
    assert set(found) == {f"morale_drop_baseline:{low.pk}"}
    variables = found[f"morale_drop_baseline:{low.pk}"].variables
    assert (variables["recent_average"], variables["baseline_average"]) == (3.0, 5.0)
    assert variables["drop_percent"] == 40


def test_morale_needs_enough_answers_to_judge(settings):
    settings.MORALE_MIN_RESPONSES = 3
    project = ProjectFactory()
    _baseline(project)
    MoraleResponseFactory.create_batch(
        2, project=project, score=1, submitted_at=NOW - timedelta(hours=1)
    )
    assert not contexts(evaluators.morale_drop_baseline)


def test_morale_drop_share_is_configurable(settings):
    project = ProjectFactory()
    _baseline(project)
    MoraleResponseFactory.create_batch(
        3, project=project, score=4, submitted_at=NOW - timedelta(hours=1)
    )
    settings.MORALE_DROP_SHARE = 0.8  # 4 is not below 0.8 x 5
    assert not contexts(evaluators.morale_drop_baseline)
    settings.MORALE_DROP_SHARE = 0.9
    assert contexts(evaluators.morale_drop_baseline)
    settings.MORALE_DROP_SHARE = 0.8
    key = f"morale_drop_baseline:{project.pk}"
    assert evaluators.morale_cleared([key], NOW) == {key}
