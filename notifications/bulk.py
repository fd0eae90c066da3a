"""Inserting many rows of one model in a few statements: the outbox's deliveries and the
batch's reviews, 10,000 at a time; and reading many rows back as instances (dispatch's
claims).

`bulk_create` spent most of a batch's staging building a model instance per row and
preparing each of its 33 values (10,000 deliveries: 1.5 s on SQLite; `insert_rows`: 0.3 s).
Here a row is a dict of values, each prepared by its field; a value that is the same in
every row (the notification, the run, the due time, the retry policy, the defaults) is
prepared once and sent once per statement; the values that differ go in a VALUES list on
SQLite and as one JSON document on PostgreSQL.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from uuid import UUID

from django.db import connections, router
from django.db.models import NOT_PROVIDED, CharField, Field, JSONField, Model, QuerySet, TextField
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init
from django.utils import timezone

# Rows per statement on PostgreSQL (one JSON document).
ROWS_PER_STATEMENT = 2000
# At most this many parameters in one SQLite statement (see sqlite_parameters).
SQLITE_STATEMENT_PARAMETERS = 4000


def insert_rows(
    model: type[Model], rows: Sequence[Mapping], *, ignore_conflicts: bool = False
) -> int:
    """Insert `rows` (each a dict of field attnames — `notification_id`, not `notification`
    — all with the same keys) and return how many were inserted. A field left out gets its
    default as `bulk_create` gives it (a callable one called for each row; `auto_now` and
    `auto_now_add` fields: now), or the database's own (`db_default`). With
    `ignore_conflicts`, a row that would break a unique constraint is skipped (ON CONFLICT
    DO NOTHING), and not counted.

    Like `bulk_create`, it sends no signals, calls no `save()` and sets no primary keys on
    anything; unlike it, it makes no model instances. SQLite and PostgreSQL; plain values
    only (no expressions; on PostgreSQL no bytes or durations)."""
    if not rows:
        return 0
    meta = model._meta
    connection = connections[router.db_for_write(model)]
    if connection.vendor not in ("sqlite", "postgresql"):
        raise NotImplementedError(
            f"insert_rows writes SQLite and PostgreSQL, not {connection.vendor}"
        )
    if meta.parents:
        raise TypeError(f"{meta.label} inherits another model's table: use bulk_create")
    names = set(rows[0])
    fields = [f for f in meta.concrete_fields if f is not meta.auto_field and not f.generated]
    if unknown := names - {f.attname for f in fields}:
        hint = (
            "the primary key is the database's to set"
            if meta.pk.attname in unknown
            else "name a foreign key by its id: notification_id, not notification"
        )
        raise TypeError(f"{meta.label} has no column field {', '.join(sorted(unknown))} ({hint})")
    if any(row.keys() != names for row in rows):
        raise ValueError("every row must name the same fields")

    constant, varying = _shared_and_own(_values_by_field(fields, rows), connection)
    quote = connection.ops.quote_name
    names_sql = ", ".join(
        quote(f.column) for f in [*(f for f, _ in constant), *(f for f, _ in varying)]
    )
    head = f"INSERT INTO {quote(meta.db_table)} ({names_sql})"
    tail = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
    build = _sqlite_statements if connection.vendor == "sqlite" else _postgresql_statements
    size, statement = build(head, tail, constant, varying, connection)
    inserted = 0
    with connection.cursor() as cursor:
        for start in range(0, len(rows), size):
            cursor.execute(*statement(start, min(start + size, len(rows))))
            inserted += cursor.rowcount
    return inserted


def _values_by_field(fields: list[Field], rows: Sequence[Mapping]) -> list[tuple[Field, list]]:
    """Each field's value in each row: as given, or its default as `bulk_create` gives it;
    fields left to the database's own default (`db_default`) are left out."""
    names, now = rows[0].keys(), timezone.now()
    columns = []
    for field in fields:
        if field.attname in names:
            values = [row[field.attname] for row in rows]
            if any(hasattr(value, "resolve_expression") for value in values):
                raise TypeError(f"{field.name}: insert_rows takes values, not expressions")
        elif getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            values = [now] * len(rows)
        elif field.has_default():
            values = [field.get_default() for _ in rows]  # a callable one, once a row
        elif field.db_default is not NOT_PROVIDED:
            continue
        else:
            values = [field.get_default()] * len(rows)
        columns.append((field, values))
    return columns


def _shared_and_own(columns, connection) -> tuple[list[tuple[Field, object]], list]:
    """The columns whose value is the same in every row (prepared once) and the others.
    Identical rows keep one column (not a JSON one if there is another) to carry them."""
    constant, varying = [], []
    for field, values in columns:
        if _all_same(field, values):
            constant.append((field, field.get_db_prep_save(values[0], connection)))
        else:
            varying.append((field, values))
    if not varying:
        plain = [i for i, (f, _) in enumerate(constant) if not isinstance(f, JSONField)]
        field, _ = constant.pop(plain[-1] if plain else -1)
        varying.append((field, dict(columns)[field]))
    return constant, varying


def _own_values(varying, connection, *, as_json: bool):
    """`values(start, end)`: the varying columns' values of those rows, prepared (a
    statement's worth at a time)."""
    prepare = [(values, _preparer(f, connection, as_json=as_json)) for f, values in varying]

    def values(start: int, end: int) -> list[list]:
        return [[p(v) for v in column[start:end]] for column, p in prepare]

    return values


def _sqlite_statements(head: str, tail: str, constant, varying, connection):
    """The shared values once per statement, in a SELECT over the VALUES list (whose
    columns SQLite names column1, column2, …); WHERE true lets ON CONFLICT follow."""
    fixed = [value for _, value in constant]
    own = _own_values(varying, connection, as_json=False)
    selected = ", ".join(["%s"] * len(fixed) + [f"column{i + 1}" for i in range(len(varying))])
    one = "(" + ", ".join(["%s"] * len(varying)) + ")"

    def statement(start: int, end: int) -> tuple[str, list]:
        rows = ", ".join([one] * (end - start))
        params = [v for row in zip(*own(start, end), strict=True) for v in row]
        return f"{head} SELECT {selected} FROM (VALUES {rows}) WHERE true{tail}", [*fixed, *params]

    return max(1, (sqlite_parameters(connection) - len(fixed)) // len(varying)), statement


def _postgresql_statements(head: str, tail: str, constant, varying, connection):
    """The rows' own values as one JSON document, read by json_to_recordset into columns of
    the table's types without their length (so an over-long text fails when it is stored,
    it is not cut); a JSON field's value is encoded by its own encoder and read as text,
    then cast. One array per column (UNNEST, as Django 5.2's bulk_create does) took a third
    longer, psycopg escaping each quote of each HTML body in Python; a VALUES list, 2 s to
    read its 330,000 placeholders."""
    quote = connection.ops.quote_name
    fixed = [value for _, value in constant]
    own = _own_values(varying, connection, as_json=True)
    selected = ", ".join(
        [f"%s::{pg_type(f, connection)}" for f, _ in constant]
        + [
            f"given.{quote(f.column)}" + ("::jsonb" if isinstance(f, JSONField) else "")
            for f, _ in varying
        ]
    )
    record = ", ".join(
        f"{quote(f.column)} {'text' if isinstance(f, JSONField) else pg_type(f, connection)}"
        for f, _ in varying
    )
    keys = [f.column for f, _ in varying]

    def statement(start: int, end: int) -> tuple[str, list]:
        document = json.dumps(
            [dict(zip(keys, row, strict=True)) for row in zip(*own(start, end), strict=True)],
            default=_json_value,
            allow_nan=False,
            ensure_ascii=False,
        )
        sql = f"{head} SELECT {selected} FROM json_to_recordset(%s) AS given ({record}){tail}"
        return sql, [*fixed, document]

    return ROWS_PER_STATEMENT, statement


def _all_same(field: Field, values: list) -> bool:
    """Whether one prepared value stands for every row's: equal and of one type (1, 1.0 and
    True are equal), and for JSON the same document ({"on": 1} and {"on": true} are equal
    dicts)."""
    first = values[0]
    if isinstance(field, JSONField):
        encoded = json.dumps(first, cls=field.encoder)
        return all(json.dumps(v, cls=field.encoder) == encoded for v in values)
    kind = type(first)
    return all(type(v) is kind and v == first for v in values)


def _preparer(field: Field, connection, *, as_json: bool):
    """The field's own preparation of a value for the database, skipped for a str going into
    a plain text column (where it is the str itself). For the JSON document (`as_json`), a
    JSON field's value is encoded as the field encodes it, and goes as text."""
    if as_json and isinstance(field, JSONField):
        return lambda value: None if value is None else json.dumps(value, cls=field.encoder)
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
    """Prepared values JSON has no type for, written as their PostgreSQL columns read them."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    raise TypeError(
        f"insert_rows cannot send a {type(value).__name__} to PostgreSQL: use bulk_create"
    )


def pg_type(field: Field, connection) -> str:
    """The column's type without its modifier (varchar(300) → varchar): an explicit cast to
    varchar(n) would cut an over-long value instead of failing."""
    return re.sub(r"\(\s*\d+(\s*,\s*\d+)?\s*\)", "", field.db_type(connection))


def sqlite_parameters(connection) -> int:
    """Parameters one SQLite statement may carry here: SQLite's own limit (32,766 since
    3.32; Django 5.2 assumes the old 999 for its own statements), but no more than
    SQLITE_STATEMENT_PARAMETERS. The sqlite3 module keeps the statements it compiled: a
    connection that staged 10,000 deliveries in statements of 32,766 parameters held 53 MB
    more afterwards, 12 MB at 8,000, 3 MB at 2,000; as fast either way."""
    connection.ensure_connection()
    limit = connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return min(limit, SQLITE_STATEMENT_PARAMETERS)


def read_instances(queryset: QuerySet, *, given: Mapping | None = None) -> list[Model]:
    """The queryset's rows as model instances, like `list(queryset)`, but each built from its
    converted values without `Model.__init__`, which checks every field's argument (1,000
    deliveries of 30 columns on SQLite: 28 ms, here 20 ms). `given` (attnames) are set
    rather than read: columns the caller has just written. Built the usual way when
    something listens to the model's pre_init or post_init signal, which this path does not
    send."""
    model, given = queryset.model, dict(given or {})
    if pre_init.has_listeners(model) or post_init.has_listeners(model):
        instances = list(queryset)
        for instance in instances:
            instance.__dict__.update(given)
        return instances
    names = [f.attname for f in model._meta.concrete_fields if f.attname not in given]
    database = queryset.db  # the router, asked once rather than for every row
    instances = []
    for values in queryset.values_list(*names):
        instance = model.__new__(model)
        instance.__dict__.update(zip(names, values, strict=True))
        instance.__dict__.update(given)
        state = instance._state = ModelState()
        state.adding, state.db = False, database
        instances.append(instance)
    return instances
