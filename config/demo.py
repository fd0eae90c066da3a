"""Demo data for `make run`: each app that has something to show adds a seeding step here."""

from collections.abc import Callable
from datetime import datetime

from notifications import demo as notifications_demo

# (label, function(now) -> rows created), run in order inside one transaction.
STEPS: list[tuple[str, Callable[[datetime], int]]] = [
    ("templates, a demo workflow and deliveries in each state", notifications_demo.seed),
]
