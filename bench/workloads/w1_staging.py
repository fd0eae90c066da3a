"""Workload 1 — batch staging: personalize and stage a 10,000-customer batch (one review row
and one delivery per recipient).

Herald: batch_launch (cohort, suppressions, 48 h check, HITL envelope) → envelope_approve
(one personalized review per recipient) → reviews_decide on the whole cohort (one delivery
per recipient, rendered into the email layout with its unsubscribe link).

Baselines, on the same customers:
- the floor: bulk_create of the very rows Herald wrote (reviews and deliveries), no logic;
- django-post-office: `mail.send_many` of the same 10,000 personalized emails (subject, text
  and HTML layout as templates, each recipient's unsubscribe link and headers).
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.test import override_settings

from bench.db import wipe
from bench.harness import REPEAT, Figure, Workload, best, measure
from bench.workloads.common import BODY, NOW, SUBJECT, Context, customers, staff_user

TEMPLATES = Path(settings.BASE_DIR) / "templates" / "emails"


def run(ctx: Context) -> Workload:
    n = ctx.size(10_000)
    result = Workload(1, "Batch staging", f"{n:,} customers, one review + one delivery each")
    heralds, floors, post_offices = [], [], []
    for _ in range(REPEAT):
        herald, phases, rows = _herald(n)
        heralds.append((herald, phases))
        floors.append(_floor(n, rows))
        post_offices.append(_post_office(n))
    herald = best([h for h, _ in heralds])
    result.herald = herald
    result.extra = next(p for h, p in heralds if h is herald)
    floor = best(floors)
    post_office = best(post_offices)

    result.compare(floor, at_least=0.5)
    result.compare(post_office, at_least=2.0)
    per_thousand = herald.queries / n * 1000
    result.check("queries per 1,000 recipients", "≤ 10", f"{per_thousand:.1f}", per_thousand <= 10)
    result.notes.append(
        "Herald inserts reviews and deliveries with notifications.bulk.insert_rows (values "
        "shared by every row sent once per statement; on PostgreSQL the rows' own values as one "
        "JSON document per statement); the floor is Django's bulk_create "
        f"({floor.queries / n * 1000:.1f} queries per 1,000 recipients here)"
    )
    return result


def _herald(n: int):
    """One full staging on fresh customers; returns the figure, its phases and the rows it
    wrote (for the floor)."""
    from notifications.batch import batch_launch, envelope_approve, reviews_decide
    from notifications.models import Delivery, ProposedAction

    wipe()
    customers(n)
    user = staff_user()
    review = ProposedAction.Type.HITL_REVIEW
    with override_settings(BATCH_MAX_RECIPIENTS_CEILING=max(10_000, n)):
        with measure("  phase: batch_launch (preview, envelope)", n, "recipients") as launch:
            run_ = batch_launch(
                user=user,
                cohort_filter="bid=B5875",
                subject=SUBJECT,
                body_template=BODY,
                max_recipients=n,
                now=NOW,
            )
        envelope = ProposedAction.objects.get(
            workflow_run=run_, action_type=ProposedAction.Type.BATCH_ENVELOPE
        )
        with measure("  phase: envelope_approve (reviews)", n, "recipients") as approve:
            reviews = envelope_approve(envelope=envelope, user=user, now=NOW)
        ids = list(
            ProposedAction.objects.filter(workflow_run=run_, action_type=review).values_list(
                "id", flat=True
            )
        )
        with measure("  phase: reviews_decide (deliveries)", n, "recipients") as decide:
            decided = reviews_decide(ids=ids, approve=True, user=user, now=NOW)
    assert reviews == n and decided.deliveries == n, (reviews, decided)
    assert Delivery.objects.count() == n
    phases = [launch, approve, decide]
    herald = Figure(
        "Herald: launch → approve → stage",
        n,
        "recipients",
        seconds=sum(p.seconds for p in phases),
        queries=sum(p.queries for p in phases),
        peak_mb=max(p.peak_mb for p in phases),
        delta_mb=max(p.delta_mb for p in phases),
    )
    rows = (
        list(
            ProposedAction.objects.filter(action_type=review)
            .order_by("id")
            .values(*_fields(ProposedAction))
        ),
        list(Delivery.objects.order_by("id").values(*_fields(Delivery))),
    )
    return herald, phases, rows


def _floor(n: int, rows) -> Figure:
    """The same rows, written with bulk_create and nothing else."""
    from notifications.models import Delivery, ProposedAction

    review_rows, delivery_rows = rows
    Delivery.objects.all()._raw_delete("default")
    ProposedAction.objects.filter(action_type=ProposedAction.Type.HITL_REVIEW)._raw_delete(
        "default"
    )
    with measure("floor: bulk_create of the same rows", n, "recipients") as floor:
        ProposedAction.objects.bulk_create(
            [ProposedAction(**row) for row in review_rows], batch_size=1000
        )
        Delivery.objects.bulk_create([Delivery(**row) for row in delivery_rows], batch_size=1000)
    return floor


def _fields(model) -> list[str]:
    return [f.attname for f in model._meta.concrete_fields if not f.primary_key]


def _post_office(n: int) -> Figure:
    """django-post-office stages the same personalized emails: subject, text and the HTML
    layout (its components inlined) as templates it renders per email; the caller adds each
    recipient's unsubscribe link and List-Unsubscribe headers, as Herald does."""
    from post_office import mail
    from post_office.models import Email

    from notifications.batch import customer_context
    from notifications.models import Customer
    from notifications.unsubscribe import list_unsubscribe_headers, unsubscribe_urls

    Email.objects.all()._raw_delete("default")
    html = _inline_layout()
    with measure("django-post-office send_many", n, "recipients") as figure:
        batch = []
        unsubscribe_url = unsubscribe_urls()  # Herald's batch helper, as Herald stages
        for customer in Customer.objects.filter(bid="B5875").order_by("id"):
            url = unsubscribe_url(customer.email)  # signed once, as Herald does
            batch.append(
                {
                    "sender": settings.DEFAULT_FROM_EMAIL,
                    "recipients": [customer.email],
                    "subject": SUBJECT,
                    "message": BODY,
                    "html_message": html,
                    "context": {
                        **customer_context(customer),
                        "unsubscribe_url": url,
                    },
                    "headers": list_unsubscribe_headers(url),
                }
            )
        mail.send_many(batch)
    assert Email.objects.count() == n
    return figure


def _inline_layout() -> str:
    """templates/emails/layout.html with its components inlined and the subject and body
    templates in place of the rendered subject and body."""
    layout = (TEMPLATES / "layout.html").read_text()
    for name in ("header", "footer"):
        component = (TEMPLATES / "components" / f"{name}.html").read_text()
        layout = layout.replace(f'{{% include "emails/components/{name}.html" %}}', component)
    layout = layout.replace("{{ subject }}", SUBJECT)
    return layout.replace(
        "{{ body|linebreaks }}", "{% filter linebreaks %}" + BODY + "{% endfilter %}"
    )
