"""The bench's throw-away database: created and migrated once per run, emptied before each
workload so every workload (and each of its baselines) starts from the same data."""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from django.apps import apps
from django.db import connection, transaction

BENCH_DATABASE = "herald_bench"
WIPED_APPS = ("cadence", "notifications", "kiosks", "production_runs", "post_office")


def use_throwaway_postgres() -> None:
    """Before Django starts: point DATABASE_URL at a fresh database `herald_bench` on the
    server DATABASE_URL names (dropped and created again, so each run starts empty)."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return
    import psycopg

    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as pg:
        pg.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")
        pg.execute(f"CREATE DATABASE {BENCH_DATABASE}")
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{BENCH_DATABASE}"))


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def vendor() -> str:
    return connection.vendor


def wipe() -> None:
    """Empty every table of Herald's apps and post-office (users and permissions stay)."""
    tables = [
        model._meta.db_table
        for app in WIPED_APPS
        for model in apps.get_app_config(app).get_models(include_auto_created=True)
        if not model._meta.proxy and model._meta.managed
    ]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
            return
        cursor.execute("PRAGMA foreign_keys = OFF")
        try:
            for table in tables:
                cursor.execute(f'DELETE FROM "{table}"')
            cursor.execute("DELETE FROM sqlite_sequence")
        finally:
            cursor.execute("PRAGMA foreign_keys = ON")


def analyze() -> None:
    """Fresh statistics after a bulk load, as a production database would have."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


def fast_insert(model, rows, *, chunk: int = 20_000) -> int:
    """Insert rows (dicts of attribute names) with executemany; other columns get their
    default. For the million-row history only: bulk_create prepares every field of every
    row and Django caps an SQLite statement at 999 parameters (about 30 deliveries), which
    took four minutes for a million rows; this takes seconds."""
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    defaults = {}
    for f in fields:
        default = f.get_default()
        defaults[f.attname] = f.get_db_prep_save(default, connection)
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(model._meta.db_table)} "
        f"({', '.join(quote(f.column) for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    count = 0
    batch: list[tuple] = []
    order: list[tuple[int, object]] = []  # (position, field) of the values rows give
    sqlite = connection.vendor == "sqlite"
    with connection.cursor() as cursor, _big_cache(cursor):
        for row in rows:
            if not order:
                order = [(i, f) for i, f in enumerate(fields) if f.attname in row]
                template = [defaults[f.attname] for f in fields]
            values = template.copy()
            for i, f in order:
                values[i] = _plain(row[f.attname], f, sqlite)
            batch.append(tuple(values))
            if len(batch) >= chunk:
                count += _insert_many(cursor, sql, batch)
                batch = []
        count += _insert_many(cursor, sql, batch)
    return count


@contextmanager
def _big_cache(cursor):
    """A large page cache while loading (SQLite's default 2 MB thrashes on a million rows
    with their indexes); the default again for the workloads themselves."""
    if connection.vendor != "sqlite":
        yield
        return
    cursor.execute("PRAGMA cache_size")
    (before,) = cursor.fetchone()
    cursor.execute("PRAGMA cache_size = -131072")  # 128 MB
    try:
        yield
    finally:
        cursor.execute(f"PRAGMA cache_size = {int(before)}")


def _plain(value, field, sqlite: bool):
    """Strings, numbers and None go as they are; datetimes the way Django stores them
    (SQLite: naive UTC text); anything else through the field."""
    if value is None or type(value) in (str, int, float):
        return value
    if type(value) is datetime:
        return str(value.astimezone(UTC).replace(tzinfo=None)) if sqlite else value
    return field.get_db_prep_save(value, connection)


def _insert_many(cursor, sql: str, batch: list[tuple]) -> int:
    with transaction.atomic():  # one commit per chunk, not per row
        cursor.executemany(sql, batch)
    return len(batch)
