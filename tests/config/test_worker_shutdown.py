"""A prefork worker on the embedded broker stops on SIGTERM to its process group, as
honcho sends it (Ctrl-C of `make run`): it hung in billiard's pool finaliser on the task
pipe's lock, left taken by a pool process the same signal ended (config/pool.py)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from celery import Celery

from config.env import broker_config

ROOT = Path(__file__).resolve().parents[2]


def test_a_prefork_worker_exits_on_sigterm_to_its_process_group_after_a_task(tmp_path):
    url, options, results = broker_config("", var_dir=tmp_path)
    env = {**os.environ, "HERALD_VAR_DIR": str(tmp_path), "CELERY_BROKER_URL": ""}
    env.pop("DATABASE_URL", None)  # the worker needs no database for a ping
    log = open(tmp_path / "worker.log", "w+")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--pool=prefork",
            "--concurrency=8",  # seven processes waiting for the pipe's lock, not one
            "--loglevel=INFO",
            f"--hostname=shutdown-{os.getpid()}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as honcho starts it
    )
    client = Celery("shutdown-client", broker=url, backend=results)
    client.conf.broker_transport_options = options
    try:
        assert client.send_task("herald.ping", args=["echo"]).get(timeout=60) == "echo"
        os.killpg(worker.pid, signal.SIGTERM)  # honcho's terminate
        try:
            worker.wait(timeout=30)  # it takes about 6 s
        except subprocess.TimeoutExpired:
            log.seek(0)
            raise AssertionError(f"still running 30 s after SIGTERM:\n{log.read()}") from None
        log.seek(0)
        assert "Warm shutdown" in log.read()
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()
