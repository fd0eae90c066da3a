"""What /healthz checks: the database answers a query and the broker accepts a connection."""

from django.conf import settings
from django.db import connections
from kombu import Connection


def database_error() -> str | None:
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "not reachable"
        return f"{type(exc).__name__}: {exc}"
    return None


def broker_error(*, timeout: float = 2.0) -> str | None:
    try:
        with Connection(
            settings.CELERY_BROKER_URL,
            transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
            connect_timeout=timeout,
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def health_report() -> dict:
    problems = {
        name: error
        for name, error in (("database", database_error()), ("broker", broker_error()))
        if error
    }
    return {"status": "ok" if not problems else "unavailable", "problems": problems}
