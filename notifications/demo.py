"""Demo data of the delivery engine: a template per channel, deliveries in each state with
their tracking events (delivered, opened, clicked, bounced), a few days of SMS and WhatsApp
traffic, the high_risk_ops kill switch (off), 200 customers across bids and regions, and two
batch notifications waiting for a person. Each part is added only when missing, so running
it twice changes nothing."""

from datetime import datetime, timedelta

from notifications.killswitches import HIGH_RISK_OPS
from notifications.models import (
    Customer,
    Delivery,
    DeliveryEvent,
    KillSwitch,
    MessageTemplate,
    Notification,
    Suppression,
    Workflow,
    WorkflowRun,
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
    ("customer:7", "office@midwood.example.org", "Midwood HS", "NYC-0047"),
    ("customer:8", "principal@tottenville.example.org", "Tottenville HS", "NYC-0048"),
    ("customer:9", "orders@forest-hills.example.org", "Forest Hills HS", "NYC-0049"),
    ("customer:10", "info@closed-academy.example.org", "Closed Academy", "NYC-0002"),
]

# Each state the outbox can be in, with the timeline (and tracking events) that led there:
# recipient -> (status, [event kinds], reason).
STATES = {
    "customer:1": ("sent", ["sent"], "accepted by recording"),
    "customer:2": ("sent", ["sent"], "accepted by recording"),
    "customer:3": ("failed", ["retry", "retry", "failed"], "gave up after 3 attempts: 503"),
    "customer:4": ("unknown", ["unknown"], "worker stopped while sending: check the provider"),
    "customer:5": ("expired", ["expired"], "expired before it could be sent"),
    "customer:7": ("delivered", ["sent", "delivered"], "delivered to the mailbox"),
    "customer:8": ("opened", ["sent", "delivered", "opened"], "opened by the recipient"),
    "customer:9": (
        "clicked",
        ["sent", "delivered", "opened", "clicked"],
        "clicked a link in the message",
    ),
    "customer:10": ("bounced", ["sent", "bounced"], "hard bounce: mailbox does not exist"),
}
TRACKING = {"delivered", "opened", "clicked", "bounced", "complained"}


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
    _, made = KillSwitch.objects.get_or_create(
        name=HIGH_RISK_OPS,
        defaults={"scope": KillSwitch.Scope.HIGH_RISK, "is_on": False},
    )
    created += made
    created += _holiday_notice(templates["email"], now)
    created += _channel_history(templates, now)
    return created


def _holiday_notice(template: MessageTemplate, now: datetime) -> int:
    """Yesterday's holiday notice, one delivery in each state, with tracking events."""
    notification = Notification.objects.filter(origin="demo:holiday_schedule").first()
    if notification is None:
        notification = Notification.objects.create(
            template=template,
            context={"school_year": "2026-27"},
            origin="demo:holiday_schedule",
            created_at=now - timedelta(days=1),
        )
    before = set(
        Delivery.objects.filter(notification=notification).values_list("recipient_key", flat=True)
    )
    created = stage_deliveries(
        notification=notification,
        recipients=[
            Recipient(key, address, {"customer_name": name, "account_ref": ref})
            for key, address, name, ref in CUSTOMERS
            if key not in before
        ],
        now=now - timedelta(days=1),
        key_prefix="demo:holiday",
    )
    sent_at = now - timedelta(hours=23)
    fresh = Delivery.objects.filter(notification=notification).exclude(recipient_key__in=before)
    for delivery in fresh:
        status, kinds, reason = STATES.get(delivery.recipient_key, ("scheduled", [], ""))
        _apply(delivery, status, kinds, reason, sent_at=sent_at, now=now)
        if status == "bounced":
            Suppression.objects.get_or_create(
                address=delivery.address,
                channel=delivery.channel,
                defaults={"reason": "bounce", "source": f"demo: bounce of delivery {delivery.pk}"},
            )
    return created


def _apply(delivery, status, kinds, reason, *, sent_at: datetime, now: datetime) -> None:
    delivery.status, delivery.status_reason = status, reason
    if "sent" in kinds:
        delivery.sent_at, delivery.provider = sent_at, "recording"
        delivery.provider_message_id = f"rec-demo-{delivery.pk}"
    if status == "scheduled":
        delivery.send_at = now + timedelta(hours=2)
    delivery.attempts = len([k for k in kinds if k in ("sent", "retry", "failed")])
    delivery.save()
    DeliveryEvent.objects.bulk_create(
        [
            DeliveryEvent(
                delivery=delivery,
                kind=kind,
                at=sent_at + timedelta(minutes=7 * i),
                reason=reason if kind not in ("sent", "retry") else "",
                provider_event_id=f"demo-{delivery.pk}-{kind}" if kind in TRACKING else "",
            )
            for i, kind in enumerate(kinds)
        ]
    )


# The last days' SMS and WhatsApp traffic, so the dashboard has every channel to show:
# (origin, channel, recipients [(key, address, context)], [(status, events, reason)]).
SMS_TO = [
    ("stakeholder-demo:1", "+14155550101", "K-04", "Hudson Yards"),
    ("stakeholder-demo:2", "+14155550102", "K-23", "Battery Park"),
    ("stakeholder-demo:3", "+14155550103", "K-48", "Docklands"),
]
WHATSAPP_TO = [
    ("partner-demo:1", "+919876543201", "Meera Block Prints", "Ajrakh Scarf"),
    ("partner-demo:2", "+919876543202", "Anil Handlooms", "Ikat Shirt"),
    ("partner-demo:3", "+61412345602", "Bondi Sewing Room", "Kantha Quilt"),
    ("partner-demo:4", "+61412345603", "Yarra Textiles", "Khadi Trousers"),
]
OTHER_OUTCOMES = [
    ("delivered", ["sent", "delivered"], "delivered to the handset"),
    ("opened", ["sent", "delivered", "opened"], "read by the recipient"),
    ("sent", ["sent"], "accepted by recording"),
    ("failed", ["retry", "retry", "failed"], "gave up after 3 attempts: 63016 outside window"),
]


def _channel_history(templates: dict[str, MessageTemplate], now: datetime) -> int:
    created = 0
    batches = [
        (
            "demo:kiosk_offline_sms",
            templates["sms"],
            [
                Recipient(key, phone, {"kiosk_name": k, "project_name": p, "since": "09:55"})
                for key, phone, k, p in SMS_TO
            ],
            3,
        ),
        (
            "demo:assignment_pending_whatsapp",
            templates["whatsapp"],
            [
                Recipient(
                    key,
                    phone,
                    {"partner_name": name, "design_name": design, "run_id": "demo", "days": 2},
                )
                for key, phone, name, design in WHATSAPP_TO
            ],
            5,
        ),
    ]
    for origin, template, recipients, days_ago in batches:
        if Notification.objects.filter(origin=origin).exists():
            continue
        at = now - timedelta(days=days_ago)
        notification = Notification.objects.create(
            template=template, context={}, origin=origin, message_type="alert", created_at=at
        )
        created += stage_deliveries(
            notification=notification, recipients=recipients, now=at, key_prefix=origin
        )
        rows = Delivery.objects.filter(notification=notification).order_by("id")
        for index, delivery in enumerate(rows):
            status, kinds, reason = OTHER_OUTCOMES[index % len(OTHER_OUTCOMES)]
            _apply(delivery, status, kinds, reason, sent_at=at + timedelta(minutes=1), now=now)
    return created


class DemoStaff:
    """The seed's Mike, for the demo batches (seed_demo runs before any user exists)."""

    username = "mike (demo)"

    def get_username(self) -> str:
        return self.username

    def has_perm(self, perm: str) -> bool:
        return True


# Two batches waiting for a person, so the approvals panel and the proposal list have
# something to show: (cohort filter, subject, body, approve the HITL gate?).
BATCHES = [
    (
        "bid=B7433&region=Connecticut",
        "{{ customer_name }}: new delivery window for {{ school_year }}",
        "Dear {{ customer_name }},\n\nfrom January we deliver to {{ region }} on Tuesdays. "
        "Your account {{ account_ref }} needs no change.",
        False,
    ),
    (
        "bid=B6120&region=Westchester",
        "Price list {{ school_year }} for {{ customer_name }}",
        "Dear {{ customer_name }},\n\nthe {{ school_year }} price list for bid {{ bid }} is "
        "attached to your account {{ account_ref }}.",
        True,
    ),
]


def seed_batches(now: datetime) -> int:
    """One batch waiting at its HITL gate, one waiting for per-recipient review."""
    from notifications import batch

    if WorkflowRun.objects.filter(created_by=DemoStaff.username).exists():
        return 0
    created = 0
    staff = DemoStaff()
    for index, (query, subject, body, approve) in enumerate(BATCHES):
        launched = now - timedelta(hours=3 - index)
        run = batch.batch_launch(
            user=staff, cohort_filter=query, subject=subject, body_template=body, now=launched
        )
        created += 1
        if approve:
            envelope = run.proposed_actions.get()
            created += batch.envelope_approve(
                envelope=envelope, user=staff, now=launched + timedelta(minutes=20)
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
