"""Demo data for `make run`: each app that has something to show adds a seeding step here."""

from collections.abc import Callable
from datetime import datetime

# (label, function(now) -> rows created). Filled in order; later issues extend it.
STEPS: list[tuple[str, Callable[[datetime], int]]] = []
