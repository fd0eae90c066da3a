import json
from datetime import UTC, datetime

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from kiosks.models import Heartbeat
from tests.kiosks.factories import KioskFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
GOOD = {"charging": False, "screen_state": True, "battery_level": 15, "mode": "kiosk"}


def post(kiosk, body, *, token=None, raw=None):
    # Devices do not carry a CSRF token: the endpoint must not need one.
    client = Client(enforce_csrf_checks=True)
    headers = {} if token == "" else {"X-Kiosk-Token": token or kiosk.token}
    return client.post(
        reverse("kiosk_heartbeat", args=[kiosk.pk]),
        data=raw if raw is not None else json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def test_a_heartbeat_updates_the_kiosk_and_is_kept():
    kiosk = KioskFactory(last_heartbeat_at=None, connection_status=False)
    with time_machine.travel(NOW, tick=False):
        response = post(kiosk, GOOD)
    assert response.status_code == 200, response.content
    assert response.json()["ok"] is True
    kiosk.refresh_from_db()
    assert (kiosk.charging, kiosk.screen_state, kiosk.battery_level) == (False, True, 15)
    assert (kiosk.connection_status, kiosk.mode, kiosk.last_heartbeat_at) == (True, "kiosk", NOW)
    beat = Heartbeat.objects.get()
    assert (beat.kiosk, beat.received_at, beat.battery_level) == (kiosk, NOW, 15)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "battery_level": 150}, "battery_level"),
        ({**GOOD, "battery_level": "high"}, "battery_level"),
        ({k: v for k, v in GOOD.items() if k != "battery_level"}, "battery_level"),
        ({**GOOD, "charging": "yes"}, "charging"),
        ({k: v for k, v in GOOD.items() if k != "screen_state"}, "screen_state"),
        ({**GOOD, "connection_status": 1}, "connection_status"),
        ({**GOOD, "mode": 7}, "mode"),
        # A NUL cannot be stored by PostgreSQL (a 500 there); a line break is no mode.
        ({**GOOD, "mode": "kiosk\x00"}, "mode"),
        ({**GOOD, "mode": "kiosk\nmaintenance"}, "mode"),
        ([1, 2], "body"),
    ],
)
def test_a_bad_payload_is_refused_naming_the_field_and_changes_nothing(body, field):
    kiosk = KioskFactory(battery_level=80)
    response = post(kiosk, body)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert field in response.json()["error"] or field == "body"
    kiosk.refresh_from_db()
    assert kiosk.battery_level == 80
    assert not Heartbeat.objects.exists()


def test_a_body_that_is_not_json_is_refused():
    kiosk = KioskFactory()
    response = post(kiosk, None, raw="charging=true")
    assert (response.status_code, response.json()["field"]) == (400, "body")


@pytest.mark.parametrize("token", ["wrong", ""])
def test_a_wrong_or_missing_token_is_forbidden_and_changes_nothing(token):
    kiosk = KioskFactory(battery_level=80)
    response = post(kiosk, GOOD, token=token)
    assert response.status_code == 403
    kiosk.refresh_from_db()
    assert kiosk.battery_level == 80
    assert not Heartbeat.objects.exists()


def test_another_kiosks_token_is_forbidden():
    kiosk, other = KioskFactory(), KioskFactory()
    assert post(kiosk, GOOD, token=other.token).status_code == 403


def test_an_unknown_kiosk_answers_like_a_wrong_token():
    kiosk = KioskFactory()
    response = Client().post(
        reverse("kiosk_heartbeat", args=[kiosk.pk + 100]),
        data=json.dumps(GOOD),
        content_type="application/json",
        headers={"X-Kiosk-Token": kiosk.token},
    )
    assert response.status_code == 403


def test_only_post_is_accepted():
    kiosk = KioskFactory()
    response = Client().get(reverse("kiosk_heartbeat", args=[kiosk.pk]))
    assert response.status_code == 405


def test_a_reported_mode_is_kept_in_lower_case_and_kiosk_mode_is_no_issue():
    from kiosks import health

    kiosk = KioskFactory()
    with time_machine.travel(NOW, tick=False):
        assert post(kiosk, {**GOOD, "battery_level": 80, "mode": " Kiosk "}).status_code == 200
        kiosk.refresh_from_db()
        assert kiosk.mode == "kiosk"
        assert health.MODE not in health.issues_of(kiosk, now=NOW)
        post(kiosk, {**GOOD, "mode": "Maintenance"})
        kiosk.refresh_from_db()
        assert (kiosk.mode, health.MODE in health.issues_of(kiosk, now=NOW)) == (
            "maintenance",
            True,
        )


def test_json_nested_too_deeply_is_refused_as_not_json():
    kiosk = KioskFactory()
    response = post(kiosk, None, raw="[" * 100_000 + "]" * 100_000)
    assert (response.status_code, response.json()["field"]) == (400, "body")
    assert not Heartbeat.objects.exists()
