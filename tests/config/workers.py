"""A real Celery worker process for the tests that need one, and a client on its broker."""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from celery import Celery

from config.env import broker_config

ROOT = Path(__file__).resolve().parents[2]


def start_worker(broker_url: str, var_dir: Path, name: str, *options: str, **popen):
    """`celery -A config worker` with `options` on the broker `broker_url` names (empty:
    the embedded one under `var_dir`), and a client sending to it: (process, client)."""
    url, transport_options, results = broker_config(broker_url, var_dir=var_dir)
    env = {**os.environ, "HERALD_VAR_DIR": str(var_dir), "CELERY_BROKER_URL": broker_url}
    env.pop("DATABASE_URL", None)  # the worker needs no database for a ping
    worker = subprocess.Popen(
        [
            sys.executable,
            *("-m", "celery", "-A", "config", "worker"),
            *options,
            f"--hostname={name}-{os.getpid()}@%h",
        ],
        cwd=ROOT,
        env=env,
        **popen,
    )
    client = Celery(f"{name}-client", broker=url, backend=results)
    client.conf.broker_transport_options = transport_options
    return worker, client


def procfile_worker_options() -> list[str]:
    """The options `make run` starts its worker with (the Procfile's `worker:` line), less
    its log level and host name, which the tests give their own."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == "worker":
            words = shlex.split(command)
            options = words[words.index("worker") + 1 :]
            return [o for o in options if not o.startswith(("--loglevel", "--hostname"))]
    raise AssertionError("the Procfile has no worker")


def wait_for_process_group(process: subprocess.Popen, seconds: float) -> float:
    """Wait until `process` and every process of its group have exited, at most `seconds`
    (real time): how long it took, or AssertionError naming what still ran."""
    started = time.monotonic()
    deadline = started + seconds
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker still ran {seconds} s after SIGTERM") from None
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"a pool process still ran {seconds} s after SIGTERM")
