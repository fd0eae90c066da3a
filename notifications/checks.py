"""System checks of what Herald needs from its database."""

from django.core import checks
from django.db import connections

# UPDATE ... FROM (dispatch's outcome writes) came with SQLite 3.33.
SQLITE_MINIMUM = (3, 33, 0)


def check_sqlite_version(app_configs=None, **kwargs):
    errors = []
    for alias in connections:
        connection = connections[alias]
        if connection.vendor != "sqlite":
            continue
        version = connection.Database.sqlite_version_info
        if version < SQLITE_MINIMUM:
            errors.append(
                checks.Error(
                    f"Database {alias!r} is SQLite {'.'.join(map(str, version))}; Herald needs "
                    f"{'.'.join(map(str, SQLITE_MINIMUM))} or later (UPDATE ... FROM).",
                    hint="Use a Python built with a newer SQLite, or PostgreSQL.",
                    id="notifications.E001",
                )
            )
    return errors
