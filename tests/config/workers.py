"""A real Celery worker process for the tests that need one, and a client on its broker."""

import os
import subprocess
import sys
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
