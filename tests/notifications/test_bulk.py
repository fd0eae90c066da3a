import sqlite3
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import Value
from django.db.models.signals import post_init
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.bulk import (
    ROWS_PER_STATEMENT,
    SQLITE_STATEMENT_PARAMETERS,
    insert_rows,
    read_instances,
)
from notifications.models import Delivery, DeliveryEvent
from tests.notifications.factories import DeliveryFactory, NotificationFactory

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


def _rows(notification, count, *, start=0):
    return [
        {
            "notification_id": notification.id,
            "recipient_key": f"customer:{i}",
            "address": f"c{i}@example.com",
            "subject": f"Hello {i}",
            "body": "Body",
            "payload": {"headers": {"X-N": str(i)}} if i % 2 else {},
            "idempotency_key": f"k:{i}",
            "send_at": NOW,
            "retry_base_seconds": 1.5 + i,
            "expires_at": NOW + timedelta(hours=i),
            "claim_token": uuid.UUID(int=i + 1),
            "created_at": NOW,
        }
        for i in range(start, start + count)
    ]


def stores_each_row_with_its_values_and_the_defaults():
    notification = NotificationFactory()
    before = timezone.now()
    assert insert_rows(Delivery, _rows(notification, 3)) == 3
    after = timezone.now()

    stored = list(Delivery.objects.order_by("idempotency_key"))
    assert [d.idempotency_key for d in stored] == ["k:0", "k:1", "k:2"]
    for i, delivery in enumerate(stored):
        assert delivery.notification_id == notification.id
        assert delivery.subject == f"Hello {i}"
        assert delivery.payload == ({"headers": {"X-N": str(i)}} if i % 2 else {})
        assert delivery.send_at == NOW
        assert delivery.retry_base_seconds == 1.5 + i
        assert delivery.expires_at == NOW + timedelta(hours=i)
        assert delivery.claim_token == uuid.UUID(int=i + 1)
        # Left out: the model's defaults.
        assert delivery.status == Delivery.Status.SCHEDULED
        assert delivery.attempts == 0
        assert delivery.max_attempts == 3
        assert delivery.workflow_run_id is None
        assert before <= delivery.updated_at <= after  # auto_now: now


def skips_conflicts_and_counts_only_the_new_rows():
    notification = NotificationFactory()
    kept = DeliveryFactory(notification=notification, idempotency_key="k:1", subject="first")
    rows = _rows(notification, 3)
    rows.append({**rows[0], "subject": "same key twice"})

    assert insert_rows(Delivery, rows, ignore_conflicts=True) == 2

    assert Delivery.objects.count() == 3
    assert Delivery.objects.get(idempotency_key="k:1").subject == "first"
    assert Delivery.objects.get(idempotency_key="k:0").subject == "Hello 0"
    assert kept.pk == Delivery.objects.get(idempotency_key="k:1").pk


def test_each_row_is_stored_with_its_values_and_the_defaults():
    stores_each_row_with_its_values_and_the_defaults()


def test_a_conflicting_row_is_skipped_and_not_counted():
    skips_conflicts_and_counts_only_the_new_rows()


def test_a_conflict_is_an_error_unless_ignored_and_writes_nothing():
    notification = NotificationFactory()
    DeliveryFactory(notification=notification, idempotency_key="k:2")

    with pytest.raises(IntegrityError), transaction.atomic():
        insert_rows(Delivery, _rows(notification, 3))

    assert Delivery.objects.count() == 1


def test_unknown_or_uneven_fields_are_refused_before_anything_is_written():
    notification = NotificationFactory()
    with pytest.raises(TypeError, match="notification_id, not notification"):
        insert_rows(Delivery, [{"notification": notification, "idempotency_key": "k"}])
    rows = _rows(notification, 2)
    del rows[1]["subject"]
    with pytest.raises(ValueError, match="same fields"):
        insert_rows(Delivery, rows)
    assert insert_rows(Delivery, []) == 0
    assert Delivery.objects.count() == 0


def test_identical_rows_are_all_inserted():
    delivery = DeliveryFactory()
    row = {"delivery_id": delivery.id, "kind": "queued", "at": NOW, "reason": "same"}

    assert insert_rows(DeliveryEvent, [row, dict(row), dict(row)]) == 3

    assert DeliveryEvent.objects.filter(delivery=delivery, reason="same").count() == 3


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's statement text")
def test_on_sqlite_values_shared_by_every_row_are_sent_once_per_statement():
    notification = NotificationFactory()
    with CaptureQueriesContext(connection) as queries:
        insert_rows(Delivery, _rows(notification, 40))

    (insert,) = [q["sql"] for q in queries if q["sql"].startswith("INSERT")]
    assert insert.count("'Body'") == 1  # shared
    assert insert.count("'customer:39'") == 1 and insert.count("'customer:0'") == 1  # own
    assert insert.count("'c39@example.com'") == 1
    assert Delivery.objects.count() == 40


def test_a_default_left_out_is_given_to_each_row_as_bulk_create_would():
    notification = NotificationFactory()
    rows = _rows(notification, 3)
    for row in rows:
        del row["created_at"]  # default: timezone.now, called for each row
        del row["payload"]  # default: dict
    before = timezone.now()
    insert_rows(Delivery, rows)
    after = timezone.now()

    stored = list(Delivery.objects.order_by("idempotency_key"))
    assert all(before <= d.created_at <= after for d in stored)
    assert [d.payload for d in stored] == [{}, {}, {}]


def test_values_that_are_equal_but_stored_differently_are_not_shared():
    notification = NotificationFactory()
    rows = _rows(notification, 3)
    rows[0]["payload"], rows[1]["payload"], rows[2]["payload"] = (
        {"on": True},
        {"on": 1},
        {"on": 1.5},
    )
    rows[0]["recipient_key"], rows[1]["recipient_key"] = 1, True  # "1" and "True" as text
    rows[2]["recipient_key"] = 1
    insert_rows(Delivery, rows)

    stored = list(Delivery.objects.order_by("idempotency_key"))
    assert [d.payload for d in stored] == [{"on": True}, {"on": 1}, {"on": 1.5}]
    assert [type(d.payload["on"]) for d in stored] == [bool, int, float]
    assert [d.recipient_key for d in stored] == ["1", "True", "1"]


def test_expressions_and_the_primary_key_are_refused_with_a_clear_error():
    notification = NotificationFactory()
    rows = _rows(notification, 2)
    rows[0]["max_attempts"], rows[1]["max_attempts"] = 4, Value(4)
    with pytest.raises(TypeError, match="values, not expressions"):
        insert_rows(Delivery, rows)
    with pytest.raises(TypeError, match="primary key"):
        insert_rows(Delivery, [{**_rows(notification, 1)[0], "id": 7}])
    assert Delivery.objects.count() == 0


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's own parameter limit")
def test_on_sqlite_statements_stay_under_the_databases_own_parameter_limit():
    """Lowered with SQLite's setlimit: a statement over it would fail."""
    notification = NotificationFactory()
    connection.ensure_connection()
    raw = connection.connection
    # 8 values differ from row to row (recipient, address, subject, payload, key, retry
    # base, expiry, token); the rest are shared, sent once per statement. Room for 4 rows:
    shared = len([f for f in Delivery._meta.concrete_fields if not f.primary_key]) - 8
    before = raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, shared + 4 * 8)
    try:
        with CaptureQueriesContext(connection) as queries:
            assert insert_rows(Delivery, _rows(notification, 10)) == 10
    finally:
        raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, before)
    assert len([q for q in queries if q["sql"].startswith("INSERT")]) == 3
    assert sorted(Delivery.objects.values_list("recipient_key", flat=True)) == sorted(
        f"customer:{i}" for i in range(10)
    )


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's statements")
def test_on_sqlite_a_statement_carries_no_more_than_its_parameter_budget():
    """Compiled statements stay in the connection's cache: big ones held megabytes."""
    notification = NotificationFactory()
    rows = SQLITE_STATEMENT_PARAMETERS // 8 + 10  # 8 values a row differ
    with CaptureQueriesContext(connection) as queries:
        assert insert_rows(Delivery, _rows(notification, rows)) == rows
    inserts = [q["sql"] for q in queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 2
    assert Delivery.objects.count() == rows


@pytest.mark.postgres
def test_on_postgresql_the_rows_go_as_one_json_document_per_statement():
    assert connection.vendor == "postgresql"
    notification = NotificationFactory()
    rows = _rows(notification, ROWS_PER_STATEMENT + 500)
    rows[7]["subject"] = 'A "quoted", {braced} \\ subject'
    with CaptureQueriesContext(connection) as queries:
        assert insert_rows(Delivery, rows) == ROWS_PER_STATEMENT + 500
    inserts = [q["sql"] for q in queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 2
    assert "json_to_recordset" in inserts[0]
    assert Delivery.objects.filter(payload__headers__has_key="X-N").count() == len(rows) // 2
    assert Delivery.objects.get(idempotency_key="k:7").subject == rows[7]["subject"]


@pytest.mark.postgres
def test_on_postgresql_an_over_long_value_fails_rather_than_being_cut():
    assert connection.vendor == "postgresql"
    rows = _rows(NotificationFactory(), 2)
    rows[1]["subject"] = "x" * 301  # the column holds 300

    with pytest.raises(DataError), transaction.atomic():
        insert_rows(Delivery, rows)

    assert Delivery.objects.count() == 0


@pytest.mark.postgres
def test_on_postgresql_the_same_rows_defaults_and_conflicts_are_stored_the_same():
    """The cases above, again through the PostgreSQL path (a JSON document)."""
    assert connection.vendor == "postgresql"
    for case in (
        stores_each_row_with_its_values_and_the_defaults,
        skips_conflicts_and_counts_only_the_new_rows,
        test_a_default_left_out_is_given_to_each_row_as_bulk_create_would,
        test_values_that_are_equal_but_stored_differently_are_not_shared,
        test_identical_rows_are_all_inserted,
    ):
        Delivery.objects.all().delete()
        case()


def _fields(instance):
    return {f.attname: getattr(instance, f.attname) for f in Delivery._meta.concrete_fields}


def test_read_instances_gives_the_rows_as_the_queryset_does_with_the_given_values_set():
    notification = NotificationFactory()
    insert_rows(Delivery, _rows(notification, 4))
    queryset = Delivery.objects.filter(notification=notification).order_by("-id")[:3]
    token = uuid.UUID(int=99)
    read = read_instances(queryset, given={"claim_token": token, "status": "sending"})
    expected = list(queryset)
    assert [_fields(r) for r in read] == [
        {**_fields(e), "claim_token": token, "status": "sending"} for e in expected
    ]
    assert all(type(r) is Delivery and not r._state.adding for r in read)
    assert read[0]._state.db == "default"
    assert read[0].notification == notification  # relations load as usual
    read[0].subject = "Changed"
    read[0].save(update_fields=["subject"])  # an update of the row, not a second insert
    assert Delivery.objects.get(id=read[0].id).subject == "Changed"
    assert Delivery.objects.count() == 4


def test_read_instances_builds_them_the_usual_way_when_someone_listens_to_post_init():
    notification = NotificationFactory()
    insert_rows(Delivery, _rows(notification, 2))
    seen = []

    def listener(sender, instance, **kwargs):
        seen.append(instance)

    post_init.connect(listener, sender=Delivery)
    try:
        read = read_instances(Delivery.objects.order_by("id"), given={"status": "sending"})
    finally:
        post_init.disconnect(listener, sender=Delivery)
    assert seen == read and len(read) == 2
    assert [r.status for r in read] == ["sending", "sending"]
