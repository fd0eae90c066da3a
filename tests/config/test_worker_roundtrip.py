"""A task goes through a real broker to a real worker process and back (no eager mode)."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.config.workers import start_worker


def _roundtrip(broker_url: str, var_dir: Path) -> str:
    worker, client = start_worker(
        broker_url,
        var_dir,
        "roundtrip",
        "--pool=solo",
        "--loglevel=WARNING",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        return client.send_task("herald.ping", args=["echo"]).get(timeout=60)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


def test_a_task_round_trips_through_the_embedded_broker_and_a_worker_process(tmp_path):
    started = time.monotonic()
    assert _roundtrip("", tmp_path) == "echo"
    assert time.monotonic() - started < 60


@pytest.mark.redis
def test_a_task_round_trips_through_redis_and_a_worker_process(tmp_path):
    url = os.environ.get("CELERY_BROKER_URL", "")
    assert url.startswith("redis://"), "make ci sets CELERY_BROKER_URL to a real Redis"
    assert _roundtrip(url, tmp_path) == "echo"
