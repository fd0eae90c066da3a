"""The Celery app of workload 3's worker: Herald's own, whose child processes open their
database connection as they start. A long-running worker's children did that long before
a drain; otherwise 20 processes on 2 cores connect during the measured one (a warm-up of
quick tasks reached only some of them: Celery gave most to the same few children)."""

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
