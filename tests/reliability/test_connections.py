"""A worker keeps its database connection from one task to the next (PostgreSQL + Redis)."""

import pytest
from django.db import connection
from django.utils import timezone

from tests.notifications.factories import DeliveryFactory
from tests.reliability.conftest import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def _worker_backends() -> set[tuple[int, str]]:
    """The other connections to this database (the worker's): backend pid and start."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid, backend_start::text FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        return set(cursor.fetchall())


def _send_one(workers) -> None:
    delivery = DeliveryFactory(send_at=timezone.now())
    workers.kick()

    def sent():
        """the delivery was sent and the worker still holds a database connection"""
        delivery.refresh_from_db()
        return delivery.status == "sent" and _worker_backends()

    wait_until(sent)


def test_a_worker_reuses_its_database_connection_across_tasks(workers):
    workers.start(1)
    _send_one(workers)
    first = _worker_backends()
    _send_one(workers)
    assert first  # kept open after the task (Celery alone closes it after every task)
    assert _worker_backends() == first  # and the same backend served the next task
