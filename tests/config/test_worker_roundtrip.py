"""A task goes through a real broker to a real worker process and back (no eager mode)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import Celery

from config.env import broker_config

ROOT = Path(__file__).resolve().parents[2]


def _roundtrip(broker_url: str, var_dir: Path) -> str:
    url, options, results = broker_config(broker_url, var_dir=var_dir)
    env = {**os.environ, "HERALD_VAR_DIR": str(var_dir), "CELERY_BROKER_URL": broker_url}
    env.pop("DATABASE_URL", None)  # the worker needs no database for a ping
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool=solo",
            "--loglevel=WARNING",
            f"--hostname=roundtrip-{os.getpid()}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    client = Celery("roundtrip-client", broker=url, backend=results)
    client.conf.broker_transport_options = options
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
