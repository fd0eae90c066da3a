"""The Celery app: settings under the CELERY_ namespace, tasks found in every app."""

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections

from config.pool import protect_queue_locks

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
protect_queue_locks()  # before the worker forks its pool (config/pool.py)

app = Celery("herald")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def close_obsolete_connections(task=None, **kwargs) -> None:
    """Around every task, what Django does around every request: a database connection
    older than CONN_MAX_AGE, or broken, is closed (and the next query opens a new one);
    the others are kept, checked by CONN_HEALTH_CHECKS before their next use. Celery
    itself closes them only every CELERY_DB_REUSE_MAX tasks (settings). Tasks run eagerly
    (tests) keep the caller's connection and transaction."""
    if task is not None and getattr(task.request, "is_eager", False):
        return
    close_old_connections()
