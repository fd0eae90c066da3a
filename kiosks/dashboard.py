"""The heartbeat dashboard's numbers: connectivity per project, each kiosk's last-heartbeat
age and issues, and a 24-hour connectivity chart drawn as SVG on the server (no scripts,
nothing fetched from the internet). Three queries whatever the number of kiosks."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db.models import Count
from django.db.models.functions import TruncHour

from kiosks import health
from kiosks.models import Heartbeat, Kiosk, Project

HOURS = 24
CHART_WIDTH, CHART_HEIGHT, BAR_GAP = 480, 60, 2


@dataclass
class KioskLine:
    kiosk: Kiosk
    issues: list[str]
    age: str
    online: bool


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass
class ProjectPanel:
    project: Project
    kiosks: list[KioskLine] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)

    @property
    def online(self) -> int:
        return sum(1 for k in self.kiosks if k.online)

    @property
    def offline(self) -> int:
        return len(self.kiosks) - self.online

    @property
    def unhealthy(self) -> int:
        return sum(1 for k in self.kiosks if k.issues)

    @property
    def connectivity(self) -> int:
        return round(100 * self.online / len(self.kiosks)) if self.kiosks else 0


def age(moment: datetime | None, *, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"
    return f"{seconds // 86400} d ago"


def _colour(share: float) -> str:
    if share >= 0.9:
        return "#059669"
    if share >= 0.5:
        return "#d97706"
    return "#dc2626"


def dashboard(*, now: datetime) -> list[ProjectPanel]:
    panels = {p.pk: ProjectPanel(p) for p in Project.objects.order_by("name")}
    for kiosk in Kiosk.objects.filter(is_active=True).order_by("name"):
        panel = panels.get(kiosk.project_id)
        if panel is None:
            continue
        issues = health.issues_of(kiosk, now=now)
        panel.kiosks.append(
            KioskLine(
                kiosk,
                issues,
                age(kiosk.last_heartbeat_at, now=now),
                not health.is_offline(kiosk, now=now),
            )
        )
    current_hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    start = current_hour - timedelta(hours=HOURS - 1)
    seen = defaultdict(dict)  # project id -> {hour: kiosks that sent at least one heartbeat}
    for row in (
        Heartbeat.objects.filter(
            received_at__gte=start, received_at__lte=now, kiosk__is_active=True
        )
        .annotate(hour=TruncHour("received_at", tzinfo=UTC))
        .values("kiosk__project_id", "hour")
        .annotate(kiosks=Count("kiosk", distinct=True))
    ):
        seen[row["kiosk__project_id"]][row["hour"]] = row["kiosks"]
    width = CHART_WIDTH / HOURS
    for project_id, panel in panels.items():
        total = len(panel.kiosks)
        for index in range(HOURS):
            hour = start + timedelta(hours=index)
            count = seen[project_id].get(hour, 0)
            share = count / total if total else 0.0
            height = max(1.0, share * CHART_HEIGHT)
            panel.bars.append(
                Bar(
                    x=round(index * width, 2),
                    y=round(CHART_HEIGHT - height, 2),
                    width=round(width - BAR_GAP, 2),
                    height=round(height, 2),
                    colour=_colour(share),
                    title=f"{hour:%H}:00 UTC — {count}/{total} kiosks sent a heartbeat",
                )
            )
    return list(panels.values())
