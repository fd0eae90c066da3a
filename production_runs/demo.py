"""Demo world of production-run reminders: two WhatsApp platforms (India with +91 and
Australia), 40 partners with English and Hindi preferences, designs, and 150 runs spread
over the three reminder buckets, runs that are not overdue yet, finished ones and a few
without a partner; progress updates; template approval statuses (India all approved,
Australia still waiting on one) so the activation gate has something to show.

Every object has a natural key, so running it twice adds nothing."""

from datetime import datetime, timedelta

from production_runs.models import (
    Design,
    Partner,
    ProductionRun,
    ProgressUpdate,
    ReminderSettings,
    ReminderState,
    RunStatus,
    TemplateStatus,
    TemplateVariantStatus,
    WhatsAppPlatform,
)
from production_runs.whatsapp_templates import DESIGN_TEMPLATE, SPECS, languages_for_platform

PLATFORMS = [
    {
        "label": "IN",
        "waba_id": "104000000000091",
        "phone_number_id": "109000000000091",
        "country_codes": "+91",
    },
    {
        "label": "AU",
        "waba_id": "104000000000061",
        "phone_number_id": "109000000000061",
        "country_codes": "+61",
    },
]
IN_NAMES = [
    "Rajesh Textiles",
    "Meera Block Prints",
    "Anil Handlooms",
    "Sunita Embroidery",
    "Kavya Weaves",
    "Farhan Dyeworks",
    "Lakshmi Tailoring",
    "Arjun Print House",
    "Pooja Crafts",
    "Imran Stitching",
    "Deepa Kalamkari",
    "Vikram Looms",
    "Nisha Mirrorwork",
    "Suresh Batik",
    "Geeta Chikankari",
    "Rohit Denim",
    "Asha Bandhani",
    "Manoj Ikat",
    "Priya Ajrakh",
    "Karan Khadi",
    "Swati Phulkari",
    "Naveen Jamdani",
    "Ritu Zardozi",
    "Harish Kantha",
]
AU_NAMES = [
    "Harbour Stitch Co",
    "Outback Prints",
    "Bondi Sewing Room",
    "Yarra Textiles",
    "Southern Cross Apparel",
    "Coral Coast Makers",
    "Blue Gum Workshop",
    "Wattle & Thread",
    "Kookaburra Garments",
    "Red Centre Dye Co",
    "Tasman Tailors",
    "Fremantle Fabric Lab",
    "Daintree Weavers",
    "Barossa Blockprint",
    "Hobart Handmade",
    "Byron Batik",
]
DESIGNS = [
    "Block Print Kurta",
    "Indigo Dabu Dress",
    "Ajrakh Scarf",
    "Kalamkari Tote",
    "Bandhani Dupatta",
    "Ikat Shirt",
    "Chikankari Top",
    "Phulkari Jacket",
    "Jamdani Saree",
    "Kantha Quilt",
    "Khadi Trousers",
    "Mirrorwork Cushion",
]
DAY = timedelta(days=1)
# (category, how many): the 150 runs.
PLAN = [
    ("pending_overdue", 28),
    ("pending_fresh", 12),
    ("not_started_overdue", 22),
    ("not_started_fresh", 8),
    ("idle_no_progress", 12),
    ("idle_old_progress", 12),
    ("in_progress_active", 20),
    ("no_partner", 6),
    ("completed", 18),
    ("cancelled", 8),
    ("draft", 4),
]


def _platforms() -> tuple[dict[str, WhatsAppPlatform], int]:
    created = 0
    found = {}
    for spec in PLATFORMS:
        platform, new = WhatsAppPlatform.objects.get_or_create(label=spec["label"], defaults=spec)
        found[platform.label] = platform
        created += int(new)
    return found, created


def _partners(platforms) -> tuple[list[Partner], int]:
    created = 0
    partners = []
    for i, name in enumerate(IN_NAMES):
        language = ["hi", "en", ""][i % 3]  # "": the +91 prefix decides (Hindi)
        partner, new = Partner.objects.get_or_create(
            name=name,
            defaults={
                "whatsapp_number": f"+9198765432{i:02d}",
                "language": language,
                "platform": platforms["IN"],
            },
        )
        partners.append(partner)
        created += int(new)
    for i, name in enumerate(AU_NAMES):
        # Mostly English by prefix; one saved Hindi (falls back to the WABA's English).
        language = "hi" if i == 3 else ("en" if i % 4 == 0 else "")
        partner, new = Partner.objects.get_or_create(
            name=name,
            defaults={
                "whatsapp_number": f"+614123456{i:02d}",
                "language": language,
                "platform": platforms["AU"],
            },
        )
        partners.append(partner)
        created += int(new)
    return partners, created


def _designs() -> tuple[list[Design], int]:
    created = 0
    designs = []
    for name in DESIGNS:
        slug = name.lower().replace(" ", "-")
        design, new = Design.objects.get_or_create(
            name=name, defaults={"image_url": f"https://cdn.example.com/designs/{slug}.jpg"}
        )
        designs.append(design)
        created += int(new)
    return designs, created


def _run_fields(category: str, n: int, now: datetime) -> tuple[dict, list[tuple[int, datetime]]]:
    """The run's fields and its progress updates [(produced, at)] for one category."""
    days, hours = timedelta(days=1), timedelta(hours=1)
    quantity = 100 + 25 * (n % 9)
    if category in ("pending_overdue", "no_partner"):
        return {"status": RunStatus.SENT_TO_PARTNER, "created_at": now - (2 + n % 5) * days}, []
    if category == "pending_fresh":
        return {"status": RunStatus.SENT_TO_PARTNER, "created_at": now - (2 + n % 20) * hours}, []
    if category in ("not_started_overdue", "not_started_fresh"):
        ago = (2 + n % 4) * days if category == "not_started_overdue" else (3 + n % 18) * hours
        accepted = now - ago
        return {
            "status": RunStatus.SENT_TO_PARTNER,
            "created_at": accepted - days,
            "accepted_at": accepted,
        }, []
    started = now - (4 + n % 6) * days
    base = {
        "status": RunStatus.IN_PROGRESS,
        "created_at": started - 2 * days,
        "accepted_at": started - days,
        "started_at": started,
        "quantity": quantity,
    }
    if category == "idle_no_progress":
        return base, []
    if category == "idle_old_progress":
        started = now - 10 * days
        base.update(created_at=started - 2 * days, accepted_at=started - days, started_at=started)
        return base, [
            (quantity // 4, started + 2 * days),
            (quantity // 2, now - (4 + n % 3) * days),
        ]
    if category == "in_progress_active":
        return base, [(quantity // 3, started + days), (quantity // 2, now - (2 + n % 20) * hours)]
    finished = now - (1 + n % 10) * days
    status = {
        "completed": RunStatus.COMPLETED,
        "cancelled": RunStatus.CANCELLED,
        "draft": RunStatus.DRAFT,
    }[category]
    fields = {"status": status, "created_at": finished - 12 * days}
    if status == RunStatus.COMPLETED:
        fields.update(
            accepted_at=finished - 11 * days,
            started_at=finished - 10 * days,
            finished_at=finished,
            produced_quantity=quantity,
        )
    elif status == RunStatus.CANCELLED:
        fields["finished_at"] = finished
    return fields, []


def _runs(partners, designs, now: datetime) -> int:
    created = 0
    number = 0
    for category, count in PLAN:
        for n in range(count):
            number += 1
            fields, progress = _run_fields(category, n, now)
            fields.setdefault("quantity", 100 + 25 * (n % 9))
            if progress:
                fields["produced_quantity"] = progress[-1][0]
            fields["updated_at"] = max(
                [fields["created_at"], *[at for _, at in progress]]
                + [fields[k] for k in ("accepted_at", "started_at", "finished_at") if k in fields]
            )
            run, new = ProductionRun.objects.get_or_create(
                reference=f"demo-{number:03d}",
                defaults={
                    "partner": None if category == "no_partner" else partners[number % 40],
                    "design": designs[number % len(designs)],
                    **fields,
                },
            )
            if not new:
                continue
            created += 1
            for produced, at in progress:
                ProgressUpdate.objects.create(run=run, produced_quantity=produced, at=at)
                created += 1
            if category == "pending_overdue" and n < 2:
                # Two chronic stalls, reminded on days 1, 3, 7, 14 and 21 without moving,
                # flagged for ops on day 7.
                run.created_at = now - 22 * DAY
                run.save(update_fields=["created_at"])
                ReminderState.objects.create(
                    run=run,
                    kind="assignment_pending",
                    stalled_since=run.created_at,
                    first_overdue_at=now - 21 * DAY,
                    reminder_count=5,
                    last_reminded_at=now - DAY,
                    flagged_at=now - 15 * DAY,
                )
                created += 1
    return created


def _statuses(platforms, now: datetime) -> int:
    created = 0
    for platform in platforms.values():
        for spec in SPECS.values():
            for language in languages_for_platform(platform):
                if language not in spec.bodies:
                    continue
                if platform.label == "AU" and spec.name == "jyt_production_run_reminder_idle_v1":
                    status = TemplateStatus.PENDING
                elif spec.name == DESIGN_TEMPLATE and platform.label == "AU":
                    status = TemplateStatus.MISSING
                else:
                    status = TemplateStatus.APPROVED
                _, new = TemplateVariantStatus.objects.get_or_create(
                    platform=platform,
                    template_name=spec.name,
                    language=language,
                    defaults={"status": status, "updated_at": now},
                )
                created += int(new)
    return created


def seed(now: datetime) -> int:
    ReminderSettings.load()
    platforms, created = _platforms()
    partners, new_partners = _partners(platforms)
    designs, new_designs = _designs()
    created += new_partners + new_designs
    created += _runs(partners, designs, now)
    created += _statuses(platforms, now)
    return created
