"""Demo data of the delivery engine: a template per channel and deliveries in each state."""

from datetime import datetime, timedelta

from notifications.models import (
    Customer,
    Delivery,
    DeliveryEvent,
    MessageTemplate,
    Notification,
    Workflow,
)
from notifications.outbox import Recipient, stage_deliveries

TEMPLATES = [
    {
        "name": "Holiday schedule",
        "channel": "email",
        "message_type": "custom",
        "subject": "{{ customer_name }}: our holiday schedule",
        "body": (
            "Dear {{ customer_name }},\n\n"
            "Our offices close from 24 December to 2 January. Orders on account "
            "{{ account_ref }} placed after 20 December ship in January.\n\n"
            "Thank you for working with us in {{ school_year }}."
        ),
        "variables": ["customer_name", "account_ref", "school_year"],
        "sample_context": {
            "customer_name": "Brooklyn Tech HS",
            "account_ref": "NYC-0042",
            "school_year": "2026-27",
        },
    },
    {
        "name": "Kiosk offline alert",
        "channel": "sms",
        "message_type": "alert",
        "subject": "",
        "body": "Herald: kiosk {{ kiosk_name }} at {{ project_name }} is offline since "
        "{{ since }}.",
        "variables": ["kiosk_name", "project_name", "since"],
        "sample_context": {"kiosk_name": "K-12", "project_name": "Hudson Yards", "since": "09:55"},
    },
    {
        "name": "Assignment pending reminder",
        "channel": "whatsapp",
        "message_type": "alert",
        "subject": "",
        "body": "Hi {{ partner_name }}, production run {{ run_id }} for {{ design_name }} is "
        "waiting for you to accept it ({{ days }} days).",
        "variables": ["partner_name", "design_name", "run_id", "days"],
        "whatsapp_template": "production_run_assignment_pending_reminder",
        "sample_context": {
            "partner_name": "Asha",
            "design_name": "Lotus",
            "run_id": "R-1",
            "days": 2,
        },
    },
]

CUSTOMERS = [
    ("customer:1", "purchasing@brooklyn-tech.example.org", "Brooklyn Tech HS", "NYC-0042"),
    ("customer:2", "office@stuyvesant.example.org", "Stuyvesant HS", "NYC-0043"),
    ("customer:3", "admin@bronx-science.example.org", "Bronx Science", "NYC-0044"),
    ("customer:4", "orders@townsend.example.org", "Townsend Harris", "NYC-0045"),
    ("customer:5", "bounce@invalid.example", "Old Account", "NYC-0001"),
    ("customer:6", "front.desk@laguardia.example.org", "LaGuardia HS", "NYC-0046"),
]


def seed(now: datetime) -> int:
    created = 0
    templates = {}
    for spec in TEMPLATES:
        template, made = MessageTemplate.objects.get_or_create(
            name=spec["name"], channel=spec["channel"], defaults=spec
        )
        templates[spec["channel"]] = template
        created += made
    workflow, made = Workflow.objects.get_or_create(
        name="Demo notices",
        defaults={"type": Workflow.Type.SCHEDULE, "description": "Deliveries of the demo world."},
    )
    created += made
    if Delivery.objects.filter(idempotency_key__startswith="demo:").exists():
        return created
    notification = Notification.objects.create(
        template=templates["email"],
        context={"school_year": "2026-27"},
        origin="demo:holiday_schedule",
        created_at=now - timedelta(days=1),
    )
    created += stage_deliveries(
        notification=notification,
        recipients=[
            Recipient(key, address, {"customer_name": name, "account_ref": ref})
            for key, address, name, ref in CUSTOMERS
        ],
        now=now - timedelta(days=1),
        key_prefix="demo:holiday",
    )
    # Show each state the outbox can be in, with the timeline that led there.
    states = {
        "customer:1": ("sent", ["sent"], "accepted by recording"),
        "customer:2": ("sent", ["sent"], "accepted by recording"),
        "customer:3": ("failed", ["retry", "retry", "failed"], "gave up after 3 attempts: 503"),
        "customer:4": ("unknown", ["unknown"], "worker stopped while sending: check the provider"),
        "customer:5": ("expired", ["expired"], "expired before it could be sent"),
    }
    sent_at = now - timedelta(hours=23)
    for delivery in Delivery.objects.filter(notification=notification):
        status, kinds, reason = states.get(delivery.recipient_key, ("scheduled", [], ""))
        delivery.status, delivery.status_reason = status, reason
        if status == "sent":
            delivery.sent_at, delivery.provider = sent_at, "recording"
            delivery.provider_message_id = f"rec-demo-{delivery.pk}"
        if status == "scheduled":
            delivery.send_at = now + timedelta(hours=2)
        delivery.attempts = len([k for k in kinds if k in ("sent", "retry", "failed")])
        delivery.save()
        DeliveryEvent.objects.bulk_create(
            [
                DeliveryEvent(
                    delivery=delivery, kind=k, at=sent_at + timedelta(seconds=2 * i), reason=reason
                )
                for i, k in enumerate(kinds)
            ]
        )
    return created


BIDS = ["B5875", "B6120", "B7001", "B7433"]
REGIONS = ["NYC DOE", "Long Island", "Westchester", "New Jersey", "Connecticut"]
KINDS = ["High School", "Middle School", "Elementary", "Academy", "Charter School"]
PLACES = [
    "Brooklyn",
    "Queens",
    "Harlem",
    "Flushing",
    "Astoria",
    "Yonkers",
    "Newark",
    "Hoboken",
    "Stamford",
    "Hempstead",
    "Bronx",
    "Tribeca",
    "Chelsea",
    "Jamaica",
    "Red Hook",
    "Inwood",
    "Bayside",
    "Hudson",
    "Riverdale",
    "Greenpoint",
]


def seed_customers(now: datetime) -> int:
    """About 200 customers across bids and regions for cohort filters."""
    customers = []
    for i in range(200):
        place, kind = PLACES[i % len(PLACES)], KINDS[(i // len(PLACES)) % len(KINDS)]
        slug = f"{place}-{kind}".lower().replace(" ", "-")
        customers.append(
            Customer(
                company_name=f"{place} {kind} {i // 100 + 1}",
                email=f"office+{i:03d}@{slug}.example.org" if i % 23 else "",
                phone=f"+1212555{i:04d}",
                account_ref=f"ACC-{i:04d}",
                bid=BIDS[i % len(BIDS)],
                region=REGIONS[(i // 4) % len(REGIONS)],
                school_year="2026-27" if i % 3 else "2025-26",
                tags="k12,priority" if i % 10 == 0 else "k12",
                is_inactive=i % 37 == 0,
            )
        )
    existing = set(Customer.objects.values_list("account_ref", flat=True))
    new = [c for c in customers if c.account_ref not in existing]
    Customer.objects.bulk_create(new)
    return len(new)
