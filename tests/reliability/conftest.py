"""Real worker processes for the reliability tests (PostgreSQL + Redis, run by make ci)."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from celery import Celery
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}:{s['PASSWORD']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


class Workers:
    """Celery worker processes on the test database and the real Redis broker."""

    def __init__(self, tmp_path: Path, **env):
        self.tmp_path = tmp_path
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "HERALD_VAR_DIR": str(tmp_path),
            "EMAIL_BACKEND": "notifications.channels.recording.EmailBackend",
            "EMAIL_RATE_PER_SECOND": "1000000",
            "LOG_LEVEL": "WARNING",
            **env,
        }
        self.processes: list[subprocess.Popen] = []

    def start(self, count: int = 1) -> None:
        for _ in range(count):
            index = len(self.processes)
            log = open(self.tmp_path / f"worker-{index}.log", "w")  # noqa: SIM115
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "config",
                        "worker",
                        "--pool=solo",
                        "--loglevel=WARNING",
                        f"--hostname=reliability-{os.getpid()}-{index}@%h",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                    ],
                    cwd=ROOT,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )  # fmt: skip
            )

    def kick(self, times: int = 1) -> None:
        client = Celery("reliability-client", broker=os.environ["CELERY_BROKER_URL"])
        for _ in range(times):
            client.send_task("herald.dispatch_due")

    def kill(self, index: int = 0) -> None:
        self.processes[index].send_signal(signal.SIGKILL)
        self.processes[index].wait(10)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def workers(tmp_path):
    assert os.environ.get("CELERY_BROKER_URL", "").startswith("redis://"), "needs make ci's Redis"
    started = Workers(tmp_path)
    yield started
    started.stop()


def wait_until(condition, *, timeout: float = 120, every: float = 0.25):
    """Real processes take real time: poll until `condition()` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"not true within {timeout}s: {condition.__doc__ or condition}")


def provider_calls_per_key() -> Counter:
    from notifications.models import RecordedMessage

    return Counter(
        payload.get("metadata", {}).get("idempotency_key")
        for payload in RecordedMessage.objects.values_list("payload", flat=True)
    )
