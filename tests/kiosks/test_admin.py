import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.urls import reverse

from kiosks.models import Heartbeat
from tests.kiosks.factories import KioskFactory, ProjectFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False):
        yield


def test_kiosk_list_shows_health_badges_and_heartbeat_age(admin_client, clock):
    KioskFactory(name="K-ok", last_heartbeat_at=NOW - timedelta(minutes=2))
    KioskFactory(
        name="K-bad", charging=False, battery_level=5, last_heartbeat_at=NOW - timedelta(hours=3)
    )
    page = admin_client.get(reverse("admin:kiosks_kiosk_changelist")).content.decode()
    assert "healthy" in page
    for issue in ("LOW_BATTERY", "NOT_CHARGING", "OFFLINE"):
        assert issue in page
    assert "2 min ago" in page and "3 h 0 min ago" in page
    assert reverse("kiosks_dashboard") in page  # linked from the list


def test_kiosk_list_filters_by_health(admin_client, clock):
    KioskFactory(name="K-ok")
    KioskFactory(name="K-offline", connection_status=False)
    url = reverse("admin:kiosks_kiosk_changelist")
    page = admin_client.get(url, {"health": "offline"}).content.decode()
    assert "K-offline" in page and "K-ok" not in page
    page = admin_client.get(url, {"health": "healthy"}).content.decode()
    assert "K-ok" in page and "K-offline" not in page


def test_a_new_token_action_replaces_the_kiosks_token(admin_client):
    kiosk = KioskFactory()
    old = kiosk.token
    admin_client.post(
        reverse("admin:kiosks_kiosk_changelist"),
        {"action": "new_token", "_selected_action": [kiosk.pk]},
    )
    kiosk.refresh_from_db()
    assert kiosk.token != old and len(kiosk.token) > 30


def test_project_list_counts_kiosks_with_issues(admin_client, clock):
    project = ProjectFactory(name="Hudson Yards")
    KioskFactory(project=project)
    KioskFactory(project=project, screen_state=False)
    page = admin_client.get(reverse("admin:kiosks_project_changelist")).content.decode()
    row = re.search(r"Hudson Yards.*?</tr>", page, re.S).group(0)
    assert re.findall(r'<td class="field-(\w+)">(\d+)</td>', row) == [
        ("kiosk_count", "2"),
        ("unhealthy_count", "1"),
        ("stakeholder_count", "0"),
    ]


def test_heartbeat_dashboard_shows_connectivity_per_project_and_a_24_hour_chart(
    admin_client, clock
):
    hudson, docks = ProjectFactory(name="Hudson Yards"), ProjectFactory(name="Docklands")
    online = KioskFactory(project=hudson, name="K-1", last_heartbeat_at=NOW - timedelta(minutes=1))
    KioskFactory(project=hudson, name="K-2", last_heartbeat_at=NOW - timedelta(hours=2))
    KioskFactory(project=docks, name="K-3", last_heartbeat_at=NOW)
    for hours in range(0, 24, 2):
        Heartbeat.objects.create(
            kiosk=online,
            received_at=NOW - timedelta(hours=hours),
            charging=True,
            screen_state=True,
            battery_level=80,
        )
    response = admin_client.get(reverse("kiosks_dashboard"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Hudson Yards — 50% connected" in page
    assert "Docklands — 100% connected" in page
    assert "1 min ago" in page and "2 h 0 min ago" in page
    charts = re.findall(r'<svg class="hb-chart".*?</svg>', page, re.S)
    assert len(charts) == 2
    assert [chart.count("<rect") for chart in charts] == [24, 24]  # hourly bars, one day
    assert "1/2 kiosks sent a heartbeat" in charts[1]  # Hudson Yards, listed second
    assert not any("http" in chart for chart in charts)  # drawn here, nothing fetched


def test_heartbeat_dashboard_is_for_staff_only(client):
    response = client.get(reverse("kiosks_dashboard"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_kiosks_admin_page_links_the_dashboard(admin_client):
    page = admin_client.get(reverse("admin:app_list", args=["kiosks"])).content.decode()
    assert reverse("kiosks_dashboard") in page


def test_heartbeat_dashboard_is_for_staff_who_may_view_kiosks(client):
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse("kiosks_dashboard")).status_code == 403
    user.user_permissions.set(Permission.objects.filter(codename="view_kiosk"))
    assert client.get(reverse("kiosks_dashboard")).status_code == 200


def test_a_kiosks_token_is_shown_only_to_staff_who_may_change_kiosks(client):
    from django.contrib.auth.models import Permission, User

    from tests.kiosks.factories import KioskFactory

    kiosk = KioskFactory()
    user = User.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="view_kiosk"))
    client.force_login(user)
    url = reverse("admin:kiosks_kiosk_change", args=[kiosk.pk])
    assert client.get(url).status_code == 200
    assert kiosk.token not in client.get(url).content.decode()
    user.user_permissions.add(Permission.objects.get(codename="change_kiosk"))
    assert kiosk.token in client.get(url).content.decode()
