"""The kiosk trigger events (seed 003). Each evaluator reads the current state with a fixed
number of queries, whatever the number of kiosks, and names its contexts:

- kiosk_offline          kiosk_offline:{kiosk_id}:{project_id}
- kiosk_health_status    kiosk_health_status:{kiosk_id}:{project_id}:{sorted,issues}
- morale_drop_baseline   morale_drop_baseline:{project_id}

so two kiosks (or projects, or issue sets) never share a cooldown. Each also says which of
its earlier contexts have cleared, for recovery-aware sending and resolved notices.
Registered into the engine from KiosksConfig.ready().
"""

from collections import defaultdict
from collections.abc import Collection, Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Avg, Count, Q

from kiosks import health
from kiosks.models import Kiosk, MoraleResponse, Project
from notifications.triggers import TriggerContext, register_evaluator

KIOSK_FIELDS = (
    "id",
    "name",
    "project_id",
    "project__name",
    "charging",
    "screen_state",
    "battery_level",
    "connection_status",
    "mode",
    "last_heartbeat_at",
    "created_at",
)


class _KioskRow:
    """A kiosk as values() returns it, with the attribute names health.py reads."""

    def __init__(self, row: dict):
        self.__dict__.update(row)
        self.project_name = row["project__name"]


def _kiosks(condition: Q) -> list[_KioskRow]:
    return [
        _KioskRow(row)
        for row in Kiosk.objects.filter(condition, is_active=True)
        .order_by("id")
        .values(*KIOSK_FIELDS)
    ]


def _members(project_ids: Collection[int]) -> dict[int, frozenset[int]]:
    """Project-driven recipients: the active stakeholders of each project (one query)."""
    if not project_ids:
        return {}
    through = Project.stakeholders.through
    members = defaultdict(set)
    for project_id, stakeholder_id in through.objects.filter(
        project_id__in=project_ids, stakeholder__is_active=True
    ).values_list("project_id", "stakeholder_id"):
        members[project_id].add(stakeholder_id)
    return {p: frozenset(s) for p, s in members.items()}


def _last_seen(kiosk) -> str:
    if kiosk.last_heartbeat_at is None:
        return "never"
    return f"{kiosk.last_heartbeat_at:%Y-%m-%d %H:%M} UTC"


def _kiosk_variables(kiosk, now: datetime) -> dict:
    minutes = (
        int((now - kiosk.last_heartbeat_at).total_seconds() // 60)
        if kiosk.last_heartbeat_at
        else None
    )
    return {
        "kiosk_id": kiosk.id,
        "kiosk_name": kiosk.name,
        "project_id": kiosk.project_id,
        "project_name": kiosk.project_name,
        "battery_level": kiosk.battery_level,
        "last_heartbeat": _last_seen(kiosk),
        "minutes_since_heartbeat": minutes,
    }


def _parse(key: str) -> tuple[int, int, list[str]] | None:
    """(kiosk id, project id, issues) from a kiosk context key."""
    parts = key.split(":")
    try:
        return int(parts[1]), int(parts[2]), (parts[3].split(",") if len(parts) > 3 else [])
    except (IndexError, ValueError):
        return None


def _kiosks_of(keys: Collection[str]) -> dict[int, _KioskRow]:
    ids = {parsed[0] for parsed in map(_parse, keys) if parsed}
    return {k.id: k for k in _kiosks(Q(id__in=ids))} if ids else {}


# --- kiosk_offline ----------------------------------------------------------------------------

OFFLINE_VARIABLES = (
    "kiosk_id",
    "kiosk_name",
    "project_id",
    "project_name",
    "battery_level",
    "last_heartbeat",
    "minutes_since_heartbeat",
    "reason",
)


def kiosk_offline(now: datetime) -> Iterator[TriggerContext]:
    """Kiosks with no heartbeat for 5 minutes, or that reported their connection lost."""
    kiosks = _kiosks(health.offline_filter(now))
    members = _members({k.project_id for k in kiosks})
    for kiosk in kiosks:
        if not kiosk.connection_status:
            reason = "connection lost"
        elif kiosk.last_heartbeat_at is None:
            reason = "it has never sent a heartbeat"
        else:
            reason = f"no heartbeat since {_last_seen(kiosk)}"
        yield TriggerContext(
            event="kiosk_offline",
            context_key=f"kiosk_offline:{kiosk.id}:{kiosk.project_id}",
            summary=f"{kiosk.name} at {kiosk.project_name}: offline ({reason})",
            variables={**_kiosk_variables(kiosk, now), "reason": reason},
            issues=(health.OFFLINE,),
            project_id=kiosk.project_id,
            kiosk_id=kiosk.id,
            stakeholder_ids=members.get(kiosk.project_id, frozenset()),
        )


def kiosk_offline_cleared(keys: Collection[str], now: datetime) -> set[str]:
    kiosks = _kiosks_of(keys)
    cleared = set()
    for key in keys:
        parsed = _parse(key)
        kiosk = kiosks.get(parsed[0]) if parsed else None
        if kiosk is None or kiosk.project_id != parsed[1] or not health.is_offline(kiosk, now=now):
            cleared.add(key)
    return cleared


# --- kiosk_health_status ----------------------------------------------------------------------

HEALTH_VARIABLES = (*OFFLINE_VARIABLES[:-1], "issues", "issue_list")


def kiosk_health_status(now: datetime) -> Iterator[TriggerContext]:
    """Kiosks with any of NOT_CHARGING, SCREEN_OFF, LOW_BATTERY, OFFLINE, MODE: one context per
    kiosk, project and set of issues; the message lists all of them."""
    kiosks = _kiosks(health.unhealthy_filter(now))
    members = _members({k.project_id for k in kiosks})
    for kiosk in kiosks:
        issues = health.issues_of(kiosk, now=now)
        if not issues:
            continue
        labels = [health.ISSUE_LABELS[i] for i in issues]
        yield TriggerContext(
            event="kiosk_health_status",
            context_key=f"kiosk_health_status:{kiosk.id}:{kiosk.project_id}:{','.join(issues)}",
            summary=f"{kiosk.name} at {kiosk.project_name}: {', '.join(issues)}",
            variables={
                **_kiosk_variables(kiosk, now),
                "issues": issues,
                "issue_list": ", ".join(labels),
            },
            issues=tuple(issues),
            project_id=kiosk.project_id,
            kiosk_id=kiosk.id,
            stakeholder_ids=members.get(kiosk.project_id, frozenset()),
        )


def kiosk_health_cleared(keys: Collection[str], now: datetime) -> set[str]:
    """A health context has cleared once none of its issues remains on that kiosk in that
    project (a kiosk still low on battery keeps its LOW_BATTERY alert relevant)."""
    kiosks = _kiosks_of(keys)
    cleared = set()
    for key in keys:
        parsed = _parse(key)
        kiosk = kiosks.get(parsed[0]) if parsed else None
        if kiosk is None or kiosk.project_id != parsed[1]:
            cleared.add(key)
            continue
        if not set(parsed[2]) & set(health.issues_of(kiosk, now=now)):
            cleared.add(key)
    return cleared


# --- morale_drop_baseline ---------------------------------------------------------------------

MORALE_VARIABLES = (
    "project_id",
    "project_name",
    "recent_average",
    "baseline_average",
    "drop_percent",
    "recent_responses",
)


def _morale(now: datetime, project_ids: Collection[int] | None = None) -> list[dict]:
    """Per project: the recent average score against the trailing baseline before it
    (one grouped query)."""
    recent_start = now - timedelta(hours=settings.MORALE_RECENT_HOURS)
    baseline_start = recent_start - timedelta(days=settings.MORALE_BASELINE_DAYS)
    recent = Q(submitted_at__gte=recent_start)
    rows = MoraleResponse.objects.filter(submitted_at__gte=baseline_start, submitted_at__lte=now)
    if project_ids is not None:
        rows = rows.filter(project_id__in=project_ids)
    return list(
        rows.values("project_id", "project__name")
        .annotate(
            recent_avg=Avg("score", filter=recent),
            recent_n=Count("id", filter=recent),
            baseline_avg=Avg("score", filter=~recent),
            baseline_n=Count("id", filter=~recent),
        )
        .order_by("project_id")
    )


def _dropped(row: dict) -> bool:
    minimum = settings.MORALE_MIN_RESPONSES
    if row["recent_n"] < minimum or row["baseline_n"] < minimum:
        return False
    return row["recent_avg"] < settings.MORALE_DROP_SHARE * row["baseline_avg"]


def morale_drop_baseline(now: datetime) -> Iterator[TriggerContext]:
    """Projects whose recent morale average fell below MORALE_DROP_SHARE of its baseline."""
    rows = [r for r in _morale(now) if _dropped(r)]
    members = _members({r["project_id"] for r in rows})
    for row in rows:
        drop = round(100 * (1 - row["recent_avg"] / row["baseline_avg"]))
        name = row["project__name"]
        yield TriggerContext(
            event="morale_drop_baseline",
            context_key=f"morale_drop_baseline:{row['project_id']}",
            summary=f"{name}: morale {row['recent_avg']:.1f} vs baseline "
            f"{row['baseline_avg']:.1f} (-{drop}%)",
            variables={
                "project_id": row["project_id"],
                "project_name": name,
                "recent_average": round(row["recent_avg"], 1),
                "baseline_average": round(row["baseline_avg"], 1),
                "drop_percent": drop,
                "recent_responses": row["recent_n"],
            },
            project_id=row["project_id"],
            stakeholder_ids=members.get(row["project_id"], frozenset()),
        )


def morale_cleared(keys: Collection[str], now: datetime) -> set[str]:
    ids = {}
    for key in keys:
        try:
            ids[key] = int(key.split(":")[1])
        except (IndexError, ValueError):
            ids[key] = None
    still = {r["project_id"] for r in _morale(now, [i for i in ids.values() if i]) if _dropped(r)}
    return {key for key, project in ids.items() if project not in still}


def register() -> None:
    register_evaluator(
        "kiosk_offline",
        kiosk_offline,
        cleared=kiosk_offline_cleared,
        label="Kiosk offline",
        variables=OFFLINE_VARIABLES,
        issues=(health.OFFLINE,),
    )
    register_evaluator(
        "kiosk_health_status",
        kiosk_health_status,
        cleared=kiosk_health_cleared,
        label="Kiosk health status",
        variables=HEALTH_VARIABLES,
        issues=health.ISSUES,
    )
    register_evaluator(
        "morale_drop_baseline",
        morale_drop_baseline,
        cleared=morale_cleared,
        label="Morale drop below baseline",
        variables=MORALE_VARIABLES,
    )
