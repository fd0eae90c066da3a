"""Inserting many rows of one model in a few statements: the outbox's deliveries and the
batch's reviews, 10,000 at a time.

`bulk_create` spent most of a batch's staging building a model instance per row and
preparing each of its 33 values (10,000 deliveries: 1.5 s on SQLite; `insert_rows`: 0.3 s).
Here a row is a dict of values, each prepared by its field; a value that is the same in
every row (the notification, the run, the due time, the retry policy, the defaults) is
prepared once and sent once per statement; the values that differ go in a VALUES list on
SQLite and as one JSON document on PostgreSQL.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from uuid import UUID

from django.db import connections, router
from django.db.models import CharField, Field, JSONField, Model, TextField
from django.utils import timezone

# Rows per statement on PostgreSQL (one JSON document).
ROWS_PER_STATEMENT = 2000
# At most this many parameters in one SQLite statement (see sqlite_parameters).
SQLITE_STATEMENT_PARAMETERS = 4000


def insert_rows(
    model: type[Model], rows: Sequence[Mapping], *, ignore_conflicts: bool = False
) -> int:
    """Insert `rows` (each a dict of field attnames — `notification_id`, not `notification`
    — all with the same keys) and return how many were inserted. Fields left out get their default
    (`auto_now` and `auto_now_add` fields: now). With `ignore_conflicts`, a row that would
    break a unique constraint is skipped (ON CONFLICT DO NOTHING), and not counted.

    Like `bulk_create`, it sends no signals, calls no `save()` and sets no primary keys on
    anything; unlike it, it makes no model instances. SQLite and PostgreSQL."""
    if not rows:
        return 0
    meta = model._meta
    connection = connections[router.db_for_write(model)]
    names = set(rows[0])
    fields = [f for f in meta.concrete_fields if f is not meta.auto_field and not f.generated]
    if unknown := names - {f.attname for f in fields}:
        raise TypeError(
            f"{meta.label} has no column field {', '.join(sorted(unknown))} "
            "(name a foreign key by its id: notification_id, not notification)"
        )
    if any(row.keys() != names for row in rows):
        raise ValueError("every row must name the same fields")

    constant: list[tuple[Field, object]] = []  # prepared once
    varying: list[Field] = []
    now = timezone.now()
    for field in fields:
        if field.attname not in rows[0]:
            value = (
                now
                if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)
                else field.get_default()
            )
            constant.append((field, field.get_db_prep_save(value, connection)))
            continue
        first = rows[0][field.attname]
        if all(row[field.attname] == first for row in rows):
            constant.append((field, field.get_db_prep_save(first, connection)))
        else:
            varying.append(field)
    as_json = connection.vendor == "postgresql"
    if varying:
        prepare = [(f.attname, _preparer(f, connection, as_json=as_json)) for f in varying]

        def columns_of(part):  # the rows' own values by column, prepared a statement at a time
            return [[p(row[name]) for row in part] for name, p in prepare]
    else:  # identical rows: one column (not a JSON one) carries them
        index = max(i for i, (f, _) in enumerate(constant) if not isinstance(f, JSONField))
        field, value = constant.pop(index)
        varying = [field]

        def columns_of(part):
            return [[value] * len(part)]

    fixed = [value for _, value in constant]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in [*(f for f, _ in constant), *varying])
    head = f"INSERT INTO {quote(meta.db_table)} ({columns})"
    tail = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
    if connection.vendor == "sqlite":
        # The shared values once per statement, in a SELECT over the VALUES list (whose
        # columns SQLite names column1, column2, …); WHERE true lets ON CONFLICT follow.
        selected = ", ".join(["%s"] * len(fixed) + [f"column{i + 1}" for i in range(len(varying))])
        size = max(1, (sqlite_parameters(connection) - len(fixed)) // len(varying))
        one = "(" + ", ".join(["%s"] * len(varying)) + ")"

        def statement(part):
            values = ", ".join([one] * len(part))
            own = [v for row in zip(*columns_of(part), strict=True) for v in row]
            return f"{head} SELECT {selected} FROM (VALUES {values}) WHERE true{tail}", [
                *fixed,
                *own,
            ]
    else:
        # PostgreSQL: the rows' own values as one JSON document, read into the table's row
        # type by json_populate_recordset (each value through its column's input function:
        # an over-long text fails, it is not cut). One array per column (UNNEST, as Django
        # 5.2's bulk_create does) took a third longer, psycopg escaping each quote of each
        # HTML body in Python; a VALUES list, 2 s to read its 330,000 placeholders.
        size = ROWS_PER_STATEMENT
        table = quote(meta.db_table)
        selected = ", ".join(
            [f"%s::{f.db_type(connection).split('(')[0]}" for f, _ in constant]
            + [f"given.{quote(f.column)}" for f in varying]
        )
        names = [f.column for f in varying]

        def statement(part):
            document = json.dumps(
                [dict(zip(names, row, strict=True)) for row in zip(*columns_of(part), strict=True)],
                default=_json_value,
                allow_nan=False,
            )
            sql = (
                f"{head} SELECT {selected} "
                f"FROM json_populate_recordset(NULL::{table}, %s) AS given{tail}"
            )
            return sql, [*fixed, document]

    inserted = 0
    with connection.cursor() as cursor:
        for start in range(0, len(rows), size):
            cursor.execute(*statement(rows[start : start + size]))
            inserted += cursor.rowcount
    return inserted


def _preparer(field: Field, connection, *, as_json: bool):
    """The field's own preparation of a value for the database, skipped for a str going into
    a plain text column (where it is the str itself). For a JSON document (`as_json`), a
    JSON field's value goes as it is, encoded by the field's encoder if it has one."""
    if as_json and isinstance(field, JSONField):
        if field.encoder is None:
            return lambda value: value
        return lambda value: json.loads(json.dumps(value, cls=field.encoder))
    kind = type(field)
    plain_text = (
        isinstance(field, CharField | TextField)
        and kind.get_db_prep_save is Field.get_db_prep_save
        and kind.get_db_prep_value is Field.get_db_prep_value
        and kind.get_prep_value in (CharField.get_prep_value, TextField.get_prep_value)
    )
    if plain_text:
        return lambda value: (
            value if type(value) is str else field.get_db_prep_save(value, connection)
        )
    return lambda value: field.get_db_prep_save(value, connection)


def _json_value(value):
    """Prepared values JSON has no type for, as their columns read them back."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    raise TypeError(f"cannot insert a {type(value).__name__} value in a JSON document")


def sqlite_parameters(connection) -> int:
    """Parameters one SQLite statement may carry here: SQLite's own limit (32,766 since
    3.32; Django 5.2 assumes the old 999 for its own statements), but no more than
    SQLITE_STATEMENT_PARAMETERS. The sqlite3 module keeps the statements it compiled: a
    connection that staged 10,000 deliveries in statements of 32,766 parameters held 53 MB
    more afterwards, 12 MB at 8,000, 3 MB at 2,000; as fast either way."""
    connection.ensure_connection()
    limit = connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return min(limit, SQLITE_STATEMENT_PARAMETERS)
