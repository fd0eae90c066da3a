"""Admin for personas, stakeholders and cooldowns, and the cadence simulator page."""

import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.urls import reverse

from cadence.models import TriggerCooldown
from tests.cadence.factories import PersonaFactory, StakeholderFactory
from tests.notifications.factories import DeliveryFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False):
        yield


def sent_to(person, *moments, kind="alert", channel="email"):
    for moment in moments:
        DeliveryFactory(
            recipient_key=person.recipient_key,
            channel=channel,
            message_type=kind,
            status="sent",
            send_at=moment,
            sent_at=moment,
        )


def test_persona_list_shows_the_cadence_and_links_the_what_if(admin_client):
    PersonaFactory(name="Manager", cooldown_hours=2, max_per_day=5, max_per_month=0)
    page = admin_client.get(reverse("admin:cadence_persona_changelist")).content.decode()
    assert "2 h" in page and "∞" in page
    assert "alert 5" in page
    assert f"{reverse('cadence_simulator')}?persona=" in page


def test_stakeholder_page_shows_overrides_and_the_effective_cadence(admin_client):
    manager = PersonaFactory(name="Manager", cooldown_hours=2, max_per_day=5)
    alice = StakeholderFactory(name="Alice", persona=manager, max_per_day=1)
    # A name with a space: "Bob" alone was found in the page's random CSRF token.
    StakeholderFactory(name="Bob Plain", persona=manager)
    listing = admin_client.get(
        reverse("admin:cadence_stakeholder_changelist"), {"overrides": "yes"}
    ).content.decode()
    assert "Alice" in listing and "Bob Plain" not in listing
    assert "max per day 1" in listing
    page = admin_client.get(reverse("admin:cadence_stakeholder_change", args=[alice.pk]))
    assert "cooldown 2 h; 1/day, 2/week, ∞/month" in page.content.decode()


def _stakeholder_form(person, **changes) -> dict:
    """The stakeholder's admin form as it shows, with `changes` typed in."""
    return {
        "name": person.name,
        "email": person.email,
        "phone": person.phone,
        "is_active": "on",
        "persona": person.persona_id,
        "preferred_channel": "email",
        "fallback_channel": "",
        "time_zone": "UTC",
        **changes,
    }


def test_saving_an_override_in_the_admin_changes_what_is_enforced(admin_client):
    alice = StakeholderFactory(name="Alice", persona=PersonaFactory(max_per_day=5))
    url = reverse("admin:cadence_stakeholder_change", args=[alice.pk])
    response = admin_client.post(
        url, _stakeholder_form(alice, time_zone="Asia/Kolkata", max_per_day="1")
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    alice.refresh_from_db()
    assert (alice.rules().max_per_day, alice.time_zone) == (1, "Asia/Kolkata")


def test_cooldowns_can_be_reset_from_the_admin(admin_client):
    row = TriggerCooldown.objects.create(
        workflow_key="workflow:1",
        context_key="kiosk_offline:1:1",
        event="kiosk_offline",
        last_sent_at=NOW,
        opened_at=NOW,
    )
    admin_client.post(
        reverse("admin:cadence_triggercooldown_changelist"),
        {"action": "reset_cooldown", "_selected_action": [row.pk]},
    )
    assert not TriggerCooldown.objects.exists()


def test_simulator_answers_with_the_decision_and_the_blocking_rule(admin_client, clock):
    manager = PersonaFactory(name="Manager", cooldown_hours=2, max_per_day=5, max_per_week=20)
    alice = StakeholderFactory(name="Alice", persona=manager)
    sent_to(alice, NOW - timedelta(minutes=30))
    page = admin_client.get(
        reverse("cadence_simulator"),
        {"stakeholder": alice.pk, "channel": "email", "message_type": "alert"},
    ).content.decode()
    decision = re.search(r'id="sim-decision">(.*?)</p>', page).group(1)
    assert decision == (
        "held by the cooldown (2 h after the message at 2026-11-23 11:30 UTC) — earliest "
        "2026-11-23 13:30 UTC"
    )
    # The same question at another time.
    page = admin_client.get(
        reverse("cadence_simulator"),
        {
            "stakeholder": alice.pk,
            "channel": "email",
            "message_type": "alert",
            "at": "2026-11-23T14:00",
        },
    ).content.decode()
    assert re.search(r'id="sim-decision">(.*?)</p>', page).group(1) == ("allowed: it would go now")


def test_simulator_names_the_rule_that_decides_the_earliest_time(admin_client, clock):
    # In Chicago (UTC-6) the 11:30 UTC message was at 05:30 local: the cooldown holds until
    # 13:30 UTC, the daily limit (1) until local midnight, 06:00 UTC tomorrow.
    manager = PersonaFactory(name="Manager", cooldown_hours=2, max_per_day=1, max_per_week=20)
    alice = StakeholderFactory(name="Alice", persona=manager, time_zone="America/Chicago")
    sent_to(alice, NOW - timedelta(minutes=30))

    def simulate(**fields):
        page = admin_client.get(
            reverse("cadence_simulator"),
            {"stakeholder": alice.pk, "channel": "email", "message_type": "alert", **fields},
        ).content.decode()
        return re.search(r'id="sim-decision">(.*?)</p>', page).group(1)

    assert simulate() == "held by the daily limit (1/1 today) — earliest 2026-11-24 06:00 UTC"
    # With room in the day, the cooldown decides; its time carries Alice's zone.
    alice.max_per_day = 5
    alice.save()
    assert simulate() == (
        "held by the cooldown (2 h after the message at 2026-11-23 05:30 CST) — earliest "
        "2026-11-23 13:30 UTC"
    )


def test_simulator_what_if_replays_the_last_7_days_under_changed_rules(admin_client, clock):
    manager = PersonaFactory(name="Manager", cooldown_hours=0, max_per_day=5, max_per_week=0)
    alice = StakeholderFactory(name="Alice", persona=manager)
    bob = StakeholderFactory(name="Bob", persona=manager)
    chris = StakeholderFactory(name="Chris", persona=manager, max_per_day=3)  # own override
    for person in (alice, bob, chris):
        sent_to(person, NOW - timedelta(days=1, hours=3), NOW - timedelta(days=1, hours=2))
    sent_to(alice, NOW - timedelta(days=1, hours=1))
    sent_to(alice, NOW - timedelta(days=9))  # outside the window
    page = admin_client.get(
        reverse("cadence_simulator"), {"persona": manager.pk, "max_per_day": "1"}
    ).content.decode()
    assert re.search(r'id="what-if-summary">(.*?)</h3>', page).group(1) == (
        "3 of 7 messages would have been held"
    )
    rows = dict(re.findall(r"<td>(\w+)</td>\s*<td>\d+</td>\s*<td>(\d+)</td>", page))
    assert rows == {"Alice": "2", "Bob": "1", "Chris": "0"}
    assert "daily limit: 2" in page


def test_simulator_is_for_staff_only(client):
    response = client.get(reverse("cadence_simulator"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_simulator_is_linked_from_the_stakeholder_list(admin_client):
    page = admin_client.get(reverse("admin:cadence_stakeholder_changelist")).content.decode()
    assert reverse("cadence_simulator") in page


def test_the_cadence_admin_page_links_the_simulator(admin_client):
    page = admin_client.get(reverse("admin:app_list", args=["cadence"])).content.decode()
    assert reverse("cadence_simulator") in page


def test_a_cooldown_over_a_year_is_refused_on_its_field_and_nothing_changes(admin_client):
    alice = StakeholderFactory(name="Alice", persona=PersonaFactory(cooldown_hours=2))
    url = reverse("admin:cadence_stakeholder_change", args=[alice.pk])
    response = admin_client.post(url, _stakeholder_form(alice, cooldown_hours="1e9"))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["cooldown_hours"] == [
        "At most 8,760 hours (a year); 1e+09 is longer than Herald waits."
    ]
    alice.refresh_from_db()
    assert alice.cooldown_hours is None


def test_the_what_if_refuses_a_cooldown_over_a_year_instead_of_failing(admin_client, clock):
    manager = PersonaFactory(name="Manager")
    response = admin_client.get(
        reverse("cadence_simulator"), {"persona": manager.pk, "cooldown_hours": "1e308"}
    )
    assert response.status_code == 200
    assert response.context["what_if_form"].errors["cooldown_hours"] == [
        "Ensure this value is less than or equal to 8760."
    ]
    assert response.context["what_if"] is None


@pytest.mark.parametrize("at", ["9999-12-31T23:59", "0001-01-01T00:00"])
def test_simulator_refuses_a_time_its_windows_cannot_reach(admin_client, clock, at):
    alice = StakeholderFactory(name="Alice")
    response = admin_client.get(
        reverse("cadence_simulator"),
        {"stakeholder": alice.pk, "channel": "email", "message_type": "alert", "at": at},
    )
    assert response.status_code == 200
    assert "The time must fall in the years 1900–2999" in response.content.decode()


def test_simulator_is_for_staff_who_may_view_stakeholders_and_personas(client, clock):
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(reverse("cadence_simulator")).status_code == 403
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_stakeholder", "view_persona"])
    )
    assert client.get(reverse("cadence_simulator")).status_code == 200


def test_the_simulator_is_linked_only_for_staff_who_may_open_it(client):
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("clerk", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename="view_stakeholder"))
    client.force_login(user)
    changelist = reverse("admin:cadence_stakeholder_changelist")
    assert reverse("cadence_simulator") not in client.get(changelist).content.decode()
    user.user_permissions.add(Permission.objects.get(codename="view_persona"))
    assert reverse("cadence_simulator") in client.get(changelist).content.decode()


def test_a_refused_page_is_herald_s_own_with_whom_to_ask(client):
    """Staff following a link they may not open get a page in the admin's frame (header,
    log out, the way back) naming their account, not Django's bare "403 Forbidden"."""
    from django.contrib.auth.models import User

    user = User.objects.create_user("clerk", password="pw", is_staff=True)
    client.force_login(user)
    response = client.get(reverse("cadence_simulator"))
    assert response.status_code == 403
    page = response.content.decode()
    assert "<h1>Permission needed</h1>" in page
    assert "logged in as <strong>clerk</strong>" in page
    assert 'id="logout-form"' in page
    assert f'href="{reverse("admin:index")}">Back to the dashboard' in page


def test_deleting_a_persona_says_what_becomes_of_its_stakeholders(admin_client):
    """Django's confirmation lists what is deleted; the people who have the persona are not,
    so it said nothing of them, though they go on under other limits."""
    from cadence.models import Persona, Stakeholder

    ops = PersonaFactory(name="Ops")
    lone = PersonaFactory(name="Lone")
    StakeholderFactory(name="Alice", persona=ops)
    StakeholderFactory(name="Bob", persona=ops)
    url = reverse("admin:cadence_persona_delete", args=[ops.pk])
    page = admin_client.get(url).content.decode()
    assert "2 stakeholders have this persona:\nAlice, Bob." in page
    assert "follow the seed's defaults\n(cooldown 1 h; 1/day, 2/week, ∞/month" in page
    assert (
        "have this persona"
        not in admin_client.get(
            reverse("admin:cadence_persona_delete", args=[lone.pk])
        ).content.decode()
    )

    changelist = reverse("admin:cadence_persona_changelist")
    chosen = {"action": "delete_selected", "_selected_action": [ops.pk, lone.pk]}
    page = admin_client.post(changelist, chosen).content.decode()
    assert "2 stakeholders have these personas:\nAlice, Bob." in page
    assert Persona.objects.count() == 2  # asked, not done
    admin_client.post(changelist, {**chosen, "post": "yes"})
    assert not Persona.objects.exists()
    assert set(Stakeholder.objects.values_list("name", "persona")) == {
        ("Alice", None),
        ("Bob", None),
    }


def test_simulator_does_not_say_a_message_to_an_inactive_stakeholder_would_go(admin_client, clock):
    alice = StakeholderFactory(name="Alice", persona=PersonaFactory(), is_active=False)
    page = admin_client.get(
        reverse("cadence_simulator"),
        {"stakeholder": alice.pk, "channel": "email", "message_type": "alert"},
    ).content.decode()
    assert re.search(r'id="sim-decision">(.*?)</p>', page).group(1) == (
        "not sent: Alice is marked inactive, and inactive stakeholders are never contacted "
        "(their queued messages are cancelled when due)"
    )
