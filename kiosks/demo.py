"""Demo data of seed 003: personas with different cadences, 30 stakeholders, 5 projects with
60 kiosks (some unhealthy) and a day of heartbeats, morale answers (one project dropping),
a week of past alerts (for the what-if replay) and two trigger workflows with templates.
Each part is created only when missing, so running it twice changes nothing."""

import random
from datetime import datetime, timedelta

from django.db.models import Q

from cadence.models import Persona, Stakeholder
from kiosks.heartbeats import HeartbeatReport, heartbeat_record
from kiosks.models import Heartbeat, Kiosk, MoraleResponse, Project
from notifications.models import Delivery, MessageTemplate, Notification
from notifications.trigger_models import TriggerEvent, TriggerSetup, TriggerWorkflow

PERSONAS = {
    # Seed Q4: managers 2 h / 5 a day, executives 4 h / 3 a day, technicians 1 h / 10 a day.
    "Manager": dict(
        cooldown_hours=2, max_per_day=5, max_per_week=20, max_per_month=80, max_alert_per_day=3
    ),
    "Executive": dict(
        cooldown_hours=4,
        max_per_day=3,
        max_per_week=10,
        max_per_month=30,
        max_alert_per_day=2,
        max_report_per_day=1,
    ),
    "Technician": dict(
        cooldown_hours=1, max_per_day=10, max_per_week=50, max_per_month=0, max_alert_per_day=8
    ),
}
PROJECTS = ["Hudson Yards", "Battery Park", "Canary Wharf", "Docklands", "Marina Bay"]
ZONES = ["America/New_York", "America/Chicago", "Europe/London", "Asia/Kolkata", "UTC"]
FIRST = [
    "Alice", "Bob", "Chen", "Dana", "Eli", "Farah", "Gus", "Hana", "Ivan", "Jo",
    "Kemal", "Lena", "Mo", "Nia", "Omar", "Pia", "Quinn", "Rui", "Sana", "Tom",
    "Uma", "Vik", "Wen", "Xavi", "Yara", "Zed", "Ana", "Ben", "Cleo", "Dev",
]  # fmt: skip

TEMPLATES = {
    "Kiosk health alert": dict(
        subject="{{ kiosk_name }} at {{ project_name }}: {{ issue_list }}",
        body="Hello {{ stakeholder_name }},\n\nKiosk {{ kiosk_name }} at {{ project_name }} "
        "needs attention: {{ issue_list }}.\nBattery: {{ battery_level }}%. Last heartbeat: "
        "{{ last_heartbeat }}.",
        variables=[
            "stakeholder_name",
            "kiosk_name",
            "project_name",
            "issue_list",
            "battery_level",
            "last_heartbeat",
        ],
    ),
    "Kiosk health digest": dict(
        subject="{{ count }} kiosk issues need attention",
        body="Hello {{ stakeholder_name }},\n\n{% for line in summaries %}- {{ line }}\n"
        "{% endfor %}",
        variables=["stakeholder_name", "count", "summaries"],
    ),
    "Kiosk health resolved": dict(
        subject="Resolved: {{ kiosk_name }} at {{ project_name }}",
        body="Hello {{ stakeholder_name }},\n\nKiosk {{ kiosk_name }} at {{ project_name }} "
        "is fine again (it had: {{ issue_list }}).",
        variables=["stakeholder_name", "kiosk_name", "project_name", "issue_list"],
    ),
    "Kiosk offline notice": dict(
        subject="{{ kiosk_name }} at {{ project_name }} is offline",
        body="Hello {{ stakeholder_name }},\n\nKiosk {{ kiosk_name }} at {{ project_name }} is "
        "offline: {{ reason }}.",
        variables=["stakeholder_name", "kiosk_name", "project_name", "reason"],
    ),
    "Morale drop": dict(
        subject="Morale at {{ project_name }} fell {{ drop_percent }}%",
        body="Hello {{ stakeholder_name }},\n\nMorale at {{ project_name }} averaged "
        "{{ recent_average }} over the last day against {{ baseline_average }} before "
        "({{ recent_responses }} answers).",
        variables=[
            "stakeholder_name",
            "project_name",
            "drop_percent",
            "recent_average",
            "baseline_average",
            "recent_responses",
        ],
    ),
}


def _templates() -> tuple[dict[str, MessageTemplate], int]:
    made_count = 0
    templates = {}
    for name, spec in TEMPLATES.items():
        template, made = MessageTemplate.objects.get_or_create(
            name=name,
            channel="email",
            defaults={**spec, "message_type": "alert", "sample_context": {}},
        )
        templates[name] = template
        made_count += made
    return templates, made_count


def _people() -> tuple[list[Stakeholder], int]:
    created = 0
    personas = {}
    for name, fields in PERSONAS.items():
        persona, made = Persona.objects.get_or_create(name=name, defaults=fields)
        personas[name] = persona
        created += made
    people = []
    for index, first in enumerate(FIRST):
        role = "Executive" if index < 5 else "Manager" if index < 15 else "Technician"
        phone = f"+1415555{index:04d}" if index % 3 else ""
        person, made = Stakeholder.objects.get_or_create(
            email=f"{first.lower()}@sites.example.org",
            defaults={
                "name": f"{first} ({role})",
                "phone": phone,
                "persona": personas[role],
                "fallback_channel": "sms" if phone else "",
                "time_zone": ZONES[index % len(ZONES)],
                # Two people whose own cadence differs from their persona's.
                "max_per_day": 2 if index == 6 else None,
                "cooldown_hours": 0.5 if index == 20 else None,
            },
        )
        people.append(person)
        created += made
    return people, created


# Some unhealthy kiosks (by number, 0-59): every kind of issue, one with several at once.
ISSUES = {
    3: {"charging": False},
    8: {"battery_level": 12},
    15: {"screen_state": False},
    31: {"connection_status": False},
    40: {"charging": False, "battery_level": 9},
    47: {"battery_level": 17},
    55: {"screen_state": False, "charging": False},
}
# Kiosks that went quiet this long before the seed, and stay quiet (offline).
QUIET = {22: timedelta(minutes=40), 47: timedelta(hours=6)}
KIOSKS_PER_PROJECT = 12


def _kiosk_name(number: int) -> str:
    return f"K-{number + 1:02d}"


def _kiosks(projects: list[Project], now: datetime) -> int:
    created = 0
    rng = random.Random(3)
    for p_index, project in enumerate(projects):
        for k in range(KIOSKS_PER_PROJECT):
            number = p_index * KIOSKS_PER_PROJECT + k
            state = {"battery_level": rng.randint(45, 100), "last_heartbeat_at": now}
            state.update(ISSUES.get(number, {}))
            if number in QUIET:
                state["last_heartbeat_at"] = now - QUIET[number]
            _, made = Kiosk.objects.get_or_create(
                project=project,
                name=_kiosk_name(number),
                defaults={**state, "mode": "kiosk", "created_at": now - timedelta(days=30)},
            )
            created += made
    return created


def _heartbeats(now: datetime) -> int:
    """A day of heartbeats every 10 minutes (stopping when a kiosk went quiet)."""
    if Heartbeat.objects.exists():
        return 0
    rows = []
    for kiosk in Kiosk.objects.all():
        last = kiosk.last_heartbeat_at or now
        for step in range(144):
            at = now - timedelta(minutes=10 * step)
            if at > last:
                continue
            rows.append(
                Heartbeat(
                    kiosk=kiosk,
                    received_at=at,
                    charging=kiosk.charging,
                    screen_state=kiosk.screen_state,
                    battery_level=kiosk.battery_level or 0,
                    connection_status=kiosk.connection_status,
                    mode=kiosk.mode,
                )
            )
    Heartbeat.objects.bulk_create(rows, batch_size=2000)
    return len(rows)


def _morale(projects: list[Project], now: datetime) -> int:
    if MoraleResponse.objects.exists():
        return 0
    rng = random.Random(7)
    rows = []
    for index, project in enumerate(projects):
        for day in range(1, 15):
            for _ in range(6):
                at = now - timedelta(days=day, hours=rng.randint(0, 20))
                rows.append(
                    MoraleResponse(
                        project=project, score=rng.choice([4, 4, 5, 3, 4]), submitted_at=at
                    )
                )
        # The last day: Docklands' morale drops.
        for hour in range(8):
            score = rng.choice([2, 2, 3]) if project.name == "Docklands" else rng.choice([4, 5])
            rows.append(
                MoraleResponse(
                    project=project, score=score, submitted_at=now - timedelta(hours=hour + 1)
                )
            )
        del index
    MoraleResponse.objects.bulk_create(rows)
    return len(rows)


def _past_alerts(people: list[Stakeholder], template: MessageTemplate, now: datetime) -> int:
    """A week of alerts that went out, so the what-if replay has something to replay."""
    if Delivery.objects.filter(idempotency_key__startswith="demo-cadence:").exists():
        return 0
    notification = Notification.objects.create(
        template=template,
        origin="kiosk_health_status (demo history)",
        message_type="alert",
        context={},
        created_at=now - timedelta(days=7),
    )
    rng = random.Random(11)
    rows = []
    for person in people:
        if not person.email:
            continue
        for day in range(7):
            for slot in range(rng.randint(0, 2)):
                at = now - timedelta(days=day, hours=2 + 3 * slot, minutes=rng.randint(0, 50))
                rows.append(
                    Delivery(
                        notification=notification,
                        recipient_key=person.recipient_key,
                        channel="email",
                        address=person.email,
                        message_type="alert",
                        subject="Kiosk alert (demo history)",
                        body="A past alert.",
                        idempotency_key=f"demo-cadence:{person.pk}:{day}:{slot}",
                        send_at=at,
                        sent_at=at,
                        status="sent",
                        provider="recording",
                        status_reason="accepted by recording",
                        created_at=at,
                    )
                )
    Delivery.objects.bulk_create(rows)
    return len(rows)


def _workflows(templates: dict[str, MessageTemplate]) -> int:
    created = 0
    managers = Persona.objects.get(name="Manager")
    executives = Persona.objects.get(name="Executive")
    health, made = TriggerWorkflow.objects.get_or_create(
        name="Kiosk health alerts",
        defaults={"description": "Seed 003: kiosk health and offline kiosks, every 5 minutes."},
    )
    created += made
    if made:
        # Beyond the seed, switched on here to show them: one digest per person per tick,
        # and a note when a kiosk people heard about is fine again.
        setup = TriggerSetup.objects.create(
            workflow=health,
            channel="email",
            message_type="alert",
            expires_after_hours=24,
            group_contexts=True,
            grouped_template=templates["Kiosk health digest"],
            send_resolved_notices=True,
        )
        setup.audience_personas.set([managers])
        TriggerEvent.objects.create(
            workflow=health,
            event="kiosk_health_status",
            template=templates["Kiosk health alert"],
            resolved_template=templates["Kiosk health resolved"],
            # kiosk_offline below announces OFFLINE on its own.
            watched_issues=["LOW_BATTERY", "NOT_CHARGING", "SCREEN_OFF"],
            # Seed Q2 made possible: a kiosk low on battery may be re-announced after 30 min.
            issue_cooldown_hours={"LOW_BATTERY": 0.5},
        )
        TriggerEvent.objects.create(
            workflow=health, event="kiosk_offline", template=templates["Kiosk offline notice"]
        )
    morale, made = TriggerWorkflow.objects.get_or_create(
        name="Morale watch",
        defaults={"description": "Project morale against its two-week baseline."},
    )
    created += made
    if made:
        setup = TriggerSetup.objects.create(
            workflow=morale,
            channel="email",
            message_type="report",
            include_project_stakeholders=False,
            cooldown_hours=24,
        )
        setup.audience_personas.set([executives])
        TriggerEvent.objects.create(
            workflow=morale, event="morale_drop_baseline", template=templates["Morale drop"]
        )
    return created


def seed(now: datetime) -> int:
    templates, created = _templates()
    people, made = _people()
    created += made
    projects = []
    for index, name in enumerate(PROJECTS):
        project, made = Project.objects.get_or_create(name=name)
        created += made
        if made:
            # Each project: two managers and three technicians (project-driven recipients).
            managers = people[5:15][2 * index : 2 * index + 2]
            technicians = people[15:30][3 * index : 3 * index + 3]
            project.stakeholders.set(managers + technicians)
        projects.append(project)
    created += _kiosks(projects, now)
    created += _heartbeats(now)
    created += _morale(projects, now)
    created += _past_alerts(people, templates["Kiosk health alert"], now)
    created += _workflows(templates)
    return created


def keep_reporting(*, now: datetime) -> int:
    """Demo only (the schedule `seed_demo` creates): the demo's kiosks report their current
    state again, as real kiosks do every few minutes, so its healthy kiosks stay healthy
    and its unhealthy ones keep their issues, also after `make run` was stopped for a while;
    the ones the demo made quiet stay quiet, and kiosks that are not the demo's (or are
    retired) are left alone. Without it every demo kiosk went offline minutes after
    `make run`."""
    reporting = Q()
    for p_index, project in enumerate(PROJECTS):
        names = [
            _kiosk_name(p_index * KIOSKS_PER_PROJECT + k)
            for k in range(KIOSKS_PER_PROJECT)
            if p_index * KIOSKS_PER_PROJECT + k not in QUIET
        ]
        reporting |= Q(project__name=project, name__in=names)
    kiosks = list(Kiosk.objects.filter(reporting, is_active=True).order_by("id"))
    for kiosk in kiosks:
        heartbeat_record(
            kiosk=kiosk,
            report=HeartbeatReport(
                charging=kiosk.charging,
                screen_state=kiosk.screen_state,
                battery_level=kiosk.battery_level if kiosk.battery_level is not None else 100,
                connection_status=kiosk.connection_status,
                mode=kiosk.mode,
            ),
            now=now,
        )
    return len(kiosks)
