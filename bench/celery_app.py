"""The Celery app of workload 3's worker: Herald's own, whose child processes open their
database connection as they start. Without it, 6-13 of the 20 processes connected during
the measured drain, 45-67 ms each on average on 2 cores (a warm-up of quick tasks reached
only the others: Celery gave most to the same few children). The drain thus measures a
busy worker, whose children have used their connection within CONN_MAX_AGE (60 s on
PostgreSQL); after an idle minute, each child reconnects at its next task."""

from celery.signals import worker_init, worker_process_init
from django.db import connection

from config.celery import app

__all__ = ["app"]


def open_database_connection(**kwargs) -> None:
    connection.ensure_connection()


@worker_init.connect
def connect_children(**kwargs) -> None:
    """Registered when the worker starts, after Celery's Django fix-up has registered its own
    handler, which closes the connection a child inherited: ours must come after it."""
    worker_process_init.connect(open_database_connection, weak=False)
