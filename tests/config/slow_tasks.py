"""A task that takes a while, for the tests that stop a worker while a task runs (the worker
imports this module with --include)."""

import time
from pathlib import Path

from celery import shared_task


@shared_task(name="tests.sleep_then_write")
def sleep_then_write(seconds: float, folder: str) -> str:
    """Write `started` in `folder`, sleep `seconds`, then write `done`: `done` is there only
    if the task ran to its end."""
    Path(folder, "started").write_text("started")
    time.sleep(seconds)
    Path(folder, "done").write_text("done")
    return "done"
