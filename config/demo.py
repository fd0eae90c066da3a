"""Demo data for `make run`: each app that has something to show adds a seeding step here."""

from collections.abc import Callable
from datetime import datetime

from config.schedules import DEMO_SCHEDULES, setup_schedules
from kiosks import demo as kiosks_demo
from notifications import demo as notifications_demo
from production_runs import demo as production_runs_demo

# (label, function(now) -> rows created), run in order inside one transaction.
STEPS: list[tuple[str, Callable[[datetime], int]]] = [
    (
        "templates, the kill switch, deliveries in each state with tracking events",
        notifications_demo.seed,
    ),
    ("customers across bids and regions", notifications_demo.seed_customers),
    ("batch notifications waiting for a decision", notifications_demo.seed_batches),
    (
        "partners, designs and 150 production runs across the reminder buckets",
        production_runs_demo.seed,
    ),
    (
        "personas, 30 stakeholders, 5 projects with 60 kiosks and kiosk trigger workflows",
        kiosks_demo.seed,
    ),
    ("the schedule that keeps the demo kiosks reporting", lambda now: _demo_schedules()),
]


def _demo_schedules() -> int:
    outcome = setup_schedules(schedules=DEMO_SCHEDULES)
    return sum(1 for result in outcome.values() if result == "created")
