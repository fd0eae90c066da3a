"""The admin index dashboard: what needs a person now, and how sending went this week.
One query (or a handful) per panel, whatever the size of the outbox."""

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.db.models.functions import TruncDate
from django.utils import timezone

from kiosks.health import offline_filter, unhealthy_filter
from kiosks.models import Kiosk
from notifications.holds import HoldContext
from notifications.models import (
    BreakerTransition,
    Channel,
    Delivery,
    Event,
    KillSwitch,
    ProposedAction,
    ProviderBreaker,
    VerifyCheck,
    WorkflowRun,
)

STATUS_COLOURS = {
    "sent": "#059669",
    "delivered": "#047857",
    "opened": "#0d9488",
    "clicked": "#0891b2",
    "scheduled": "#2563eb",
    "sending": "#7c3aed",
    "failed": "#dc2626",
    "bounced": "#b91c1c",
    "unknown": "#d97706",
    "skipped": "#9ca3af",
    "expired": "#6b7280",
    "cancelled": "#4b5563",
    "complained": "#be123c",
}


@dataclass
class Bar:
    label: str
    segments: list[tuple[str, int, str]]  # (status, count, colour)

    @property
    def total(self) -> int:
        return sum(count for _, count, _ in self.segments)


def window_start(now: datetime, days: int = 7) -> datetime:
    """The start of the panel's last `days` days: midnight, `days - 1` days before today,
    in TIME_ZONE (the days the chart's bars group by), so the bars are whole days; the
    channel table counts from the same moment."""
    local = timezone.localtime(now) - timedelta(days=days - 1)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def deliveries_by_day(now: datetime, days: int = 7) -> list[Bar]:
    start = window_start(now, days)
    rows = (
        Delivery.objects.filter(created_at__gte=start)
        .annotate(day=TruncDate("created_at"))
        .values("day", "status")
        .annotate(n=Count("id"))
    )
    by_day: dict = defaultdict(dict)
    for row in rows:
        by_day[row["day"]][row["status"]] = row["n"]
    bars = []
    for offset in range(days):
        day = (start + timedelta(days=offset)).date()
        counts = by_day.get(day, {})
        bars.append(
            Bar(
                day.strftime("%a %d"),
                [
                    (s, counts[s], STATUS_COLOURS.get(s, "#6b7280"))
                    for s in STATUS_COLOURS
                    if counts.get(s)
                ],
            )
        )
    return bars


CHANNEL_COLUMNS = {
    "sent": ["sent", "delivered", "opened", "clicked"],
    "failed": ["failed", "bounced", "complained", "unknown"],
    "queued": ["scheduled", "sending"],
}


def by_channel(now: datetime, days: int = 7) -> list[dict]:
    """Each channel's deliveries by outcome; `other` (expired, cancelled, skipped)
    makes the columns add up to the total; a complaint counts as failed, as a run's progress
    counts it."""
    counted = [status for statuses in CHANNEL_COLUMNS.values() for status in statuses]
    return list(
        Delivery.objects.filter(created_at__gte=window_start(now, days))
        .values("channel")
        .annotate(
            total=Count("id"),
            **{
                column: Count("id", filter=Q(status__in=statuses))
                for column, statuses in CHANNEL_COLUMNS.items()
            },
            other=Count("id", filter=~Q(status__in=counted)),
        )
        .order_by("channel")
    )


def svg_stacked_bars(bars: list[Bar], *, width: int = 560, height: int = 180) -> str:
    """A server-rendered stacked bar chart (no JavaScript, no internet)."""
    top = max([b.total for b in bars] + [1])
    gap, left, bottom = 8, 34, 22
    slot = (width - left) / max(len(bars), 1)
    bar_width = slot - gap
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="herald-chart" width="{width}" '
        f'height="{height}" role="img" aria-label="deliveries per day by status">',
        f'<text x="0" y="12" font-size="10" fill="#6b7280">{top}</text>',
        f'<text x="0" y="{height - bottom}" font-size="10" fill="#6b7280">0</text>',
    ]
    usable = height - bottom - 10
    for i, bar in enumerate(bars):
        x = left + i * slot
        y = height - bottom
        for status, count, colour in bar.segments:
            h = usable * count / top
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_width:.1f}" height="{h:.1f}" '
                f'fill="{colour}"><title>{bar.label}: {count} {status}</title></rect>'
            )
        parts.append(
            f'<text x="{x + bar_width / 2:.1f}" y="{height - 6}" font-size="10" '
            f'text-anchor="middle" fill="#374151">{bar.label}</text>'
        )
        if bar.total:
            parts.append(
                f'<text x="{x + bar_width / 2:.1f}" y="{y - 2:.1f}" font-size="10" '
                f'text-anchor="middle" fill="#111827">{bar.total}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def queued_reasons(now: datetime) -> list[tuple[str, int]]:
    """Scheduled deliveries grouped by why they wait, each counted once and, as on the
    delivery pages (holds.explain), first under what holds it: a kill switch, its batch
    halted (aborted by the breaker: until a resume), the address checks of dispatch
    cancelling it when due (`cancelled_when_due`), an open provider breaker; the others by
    the first words of their reason."""
    from notifications.breakers import breaker_key
    from notifications.dispatch import provider_of
    from notifications.killswitches import frozen_filter

    context = HoldContext.load()
    scheduled = Delivery.objects.filter(status="scheduled")
    holds = []
    held = frozen_filter(context.switches) if context.switches else None
    if held is not None:
        holds.append(("frozen by a kill switch", held))
    if context.halted_runs:
        holds.append(
            (
                "their batch was halted: resume or cancel it",
                Q(workflow_run_id__in=context.halted_runs),
            )
        )
    holds.extend(cancelled_when_due(now))
    for channel in Channel.values:
        key = breaker_key(channel, provider_of(channel))
        breaker = context.breakers.get(key)
        if breaker and breaker.state == ProviderBreaker.State.OPEN:
            holds.append((f"provider breaker {key} open", Q(channel=channel)))
    held_counts = []
    for reason, held in holds:
        n = scheduled.filter(held).count()
        scheduled = scheduled.exclude(held)
        if n:
            held_counts.append((reason, n))
    rows = scheduled.values("status_reason").annotate(n=Count("id")).order_by("-n")
    reasons: dict[str, int] = defaultdict(int)
    for row in rows:
        reason = row["status_reason"] or "due or scheduled for later"
        reasons[reason.split(":")[0][:60]] += row["n"]
    return held_counts + sorted(reasons.items(), key=lambda kv: -kv[1])


# An address check's cancel reason (its words before ":") as the dashboard groups it.
CANCELLED_WHEN_DUE = {
    "inactive": "stakeholder inactive or deleted",
    "deleted": "stakeholder inactive or deleted",
    "no address": "stakeholder has no address now",
}


def cancelled_when_due(now: datetime) -> list[tuple[str, Q]]:
    """The scheduled stakeholder deliveries that dispatch's address checks would cancel
    when due (`address_decisions`: their stakeholder was marked inactive, deleted or left
    without an address since they were queued), grouped by why, each group as a filter.
    Two queries whatever their number: the deliveries, then their stakeholders."""
    from notifications.cadence_checks import STAKEHOLDER_PREFIX
    from notifications.dispatch import address_decisions

    waiting = list(
        Delivery.objects.filter(
            status=Delivery.Status.SCHEDULED, recipient_key__startswith=STAKEHOLDER_PREFIX
        ).only("id", "recipient_key", "channel", "address", "fallback_channel", "fallback_address")
    )
    ids: dict[str, list[int]] = defaultdict(list)
    for delivery_id, decision in address_decisions(waiting, now).items():
        if decision.action == "cancel":
            why = decision.reason.split(":")[0]
            ids[CANCELLED_WHEN_DUE.get(why, why)].append(delivery_id)
    return [
        (f"will be cancelled when due: {why}", Q(id__any_of=group)) for why, group in ids.items()
    ]


def reminders_this_week(now: datetime) -> list[tuple[str, int]]:
    monday = (now - timedelta(days=now.weekday())).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    """The runs reminded since Monday, by bucket: one per reminder event, and each run a
    digest named (with the digest on, a partner's runs of a bucket share one event)."""
    week = Event.objects.filter(created_at__gte=monday).exclude(
        # Not sent: its partner had no WhatsApp number when the dispatcher handled it.
        handlings__result__skipped="no_whatsapp_number"
    )
    counts: dict[str, int] = defaultdict(int)
    reminders = (
        week.filter(name__startswith="production_run.reminder_")
        .values("name")
        .annotate(n=Count("id"))
    )
    for row in reminders:
        counts[row["name"].removeprefix("production_run.reminder_")] += row["n"]
    # A handful a week (one per partner, bucket and day).
    digests = week.filter(name__startswith="production_run.digest_").values_list("name", "payload")
    for name, payload in digests:
        counts[name.removeprefix("production_run.digest_")] += len(
            payload.get("production_run_ids", [])
        )
    return sorted(counts.items())


def kiosk_health(now: datetime) -> dict:
    return Kiosk.objects.aggregate(
        total=Count("id"),
        offline=Count("id", filter=offline_filter(now)),
        unhealthy=Count("id", filter=unhealthy_filter(now)),
    )


def dashboard(now: datetime | None = None) -> dict:
    now = now or timezone.now()
    bars = deliveries_by_day(now)
    return {
        "now": now,
        "approvals": list(
            ProposedAction.objects.filter(status="pending")
            .values("workflow_run_id", "action_type")
            .annotate(n=Count("id"))
            .order_by("workflow_run_id")
        ),
        "chart": svg_stacked_bars(bars),
        "legend": [
            (s, c)
            for s, c in STATUS_COLOURS.items()
            if any(s == seg[0] for b in bars for seg in b.segments)
        ],
        "week_total": sum(b.total for b in bars),
        "channels": by_channel(now),
        "queued": queued_reasons(now),
        "breakers_open": list(ProviderBreaker.objects.exclude(state="closed")),
        # Trips: a closed breaker opening (not a failed trial call opening it again).
        "breaker_trips": BreakerTransition.objects.filter(
            from_state="closed", to_state="open", at__gte=now - timedelta(days=7)
        ).count(),
        "runs_to_resume": list(
            WorkflowRun.objects.filter(status="aborted").select_related("workflow")
        ),
        "switches": list(KillSwitch.objects.all()),
        "kiosks": kiosk_health(now),
        "reminders": reminders_this_week(now),
        "verify_failing": list(
            VerifyCheck.objects.filter(status__in=["fail", "timeout"]).select_related(
                "workflow_run"
            )[:20]
        ),
        "verify_pending": VerifyCheck.objects.filter(status="pending").count(),
    }
