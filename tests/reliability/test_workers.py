"""Nothing sent twice, nothing lost: real Celery workers on PostgreSQL and Redis."""

import os
import subprocess
from datetime import timedelta

import pytest
from django.utils import timezone

from notifications.models import Delivery
from tests.notifications.factories import NotificationFactory
from tests.reliability.conftest import provider_calls_per_key, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def _deliveries(count: int, *, send_at=None) -> list[int]:
    notification = NotificationFactory()
    now = send_at or timezone.now()
    Delivery.objects.bulk_create(
        [
            Delivery(
                notification=notification,
                recipient_key=f"customer:{i}",
                channel="email",
                address=f"c{i}@example.org",
                subject="Hello",
                body="Body",
                idempotency_key=f"load:{i}",
                send_at=now,
            )
            for i in range(count)
        ],
        batch_size=2000,
    )
    return list(Delivery.objects.values_list("idempotency_key", flat=True))


def _nothing_left():
    """no delivery scheduled or sending"""
    return not Delivery.objects.filter(status__in=["scheduled", "sending"]).exists()


def test_four_workers_send_ten_thousand_deliveries_exactly_once(workers):
    keys = _deliveries(10_000)
    workers.start(4)
    workers.kick(8)
    wait_until(_nothing_left, timeout=300)
    calls = provider_calls_per_key()
    assert set(calls) == set(keys)
    assert max(calls.values()) == 1
    assert Delivery.objects.filter(status="sent").count() == 10_000


def test_a_worker_killed_mid_batch_resends_nobody_blindly(workers, tmp_path):
    slow = workers.env | {
        "EMAIL_BACKEND": "tests.reliability.slow_backend.EmailBackend",
        "DISPATCH_SENDING_TIMEOUT_SECONDS": "1",
        "DISPATCH_WRITE_BATCH": "10",
    }
    workers.env = slow
    keys = _deliveries(300)
    workers.start(1)
    workers.kick()
    wait_until(lambda: Delivery.objects.filter(status="sent").count() >= 30, timeout=60)
    workers.kill(0)
    in_flight = Delivery.objects.filter(status="sending").count()
    assert in_flight > 0  # killed mid-batch, with rows claimed

    workers.start(1)  # the restart: its sweep turns stale "sending" rows into "unknown"
    workers.kick()
    wait_until(_nothing_left, timeout=120)
    calls = provider_calls_per_key()
    assert max(calls.values()) == 1  # nobody got two
    statuses = dict(Delivery.objects.values_list("idempotency_key", "status"))
    assert set(statuses.values()) <= {"sent", "unknown"}
    assert all(calls[k] == 1 for k, s in statuses.items() if s == "sent")
    unknown = [k for k, s in statuses.items() if s == "unknown"]
    assert len(unknown) == in_flight  # shown for reconciliation, not resent
    assert len(statuses) == len(keys)


def _redis(*args):
    return subprocess.run(
        ["redis-cli", "-p", os.environ["REDIS_PORT"], *args], capture_output=True, text=True
    )


def test_broker_loss_loses_nothing_and_the_sweep_sends_once(workers, tmp_path, settings):
    from config.celery import app
    from notifications.dispatch import dispatch_due

    app.conf.broker_url = os.environ["CELERY_BROKER_URL"]
    app.conf.broker_transport_options = {"max_retries": 1}
    app.conf.broker_connection_timeout = 1
    settings.EMAIL_BACKEND = "notifications.channels.recording.EmailBackend"
    _redis("shutdown", "nosave")
    try:
        from notifications.outbox import Recipient, stage_deliveries

        stage_deliveries(  # commits, then the "look now" kick fails: the broker is gone
            notification=NotificationFactory(),
            recipients=[Recipient(f"customer:{i}", f"c{i}@example.org", {}) for i in range(50)],
            now=timezone.now(),
            key_prefix="lost",
        )
        assert Delivery.objects.filter(status="scheduled").count() == 50
    finally:
        subprocess.run(
            ["redis-server", "--port", os.environ["REDIS_PORT"], "--bind", "127.0.0.1",
             "--daemonize", "yes", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path)],
            check=True, capture_output=True,
        )  # fmt: skip
        wait_until(lambda: _redis("ping").stdout.strip() == "PONG", timeout=20)
        app.conf.broker_url = "memory://"
    # The every-minute sweep (beat's dispatch_due) finds the rows on its own.
    report = dispatch_due(now=timezone.now() + timedelta(seconds=1))
    assert report.sent == 50
    assert max(provider_calls_per_key().values()) == 1
