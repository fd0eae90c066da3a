"""A prefork worker on the embedded broker stops on SIGTERM to its process group, as
honcho sends it (Ctrl-C of `make run`): it hung in billiard's pool finaliser on the task
pipe's lock, left taken by a pool process the same signal ended (config/pool.py)."""

import os
import signal
import subprocess

from tests.config.workers import start_worker


def test_a_prefork_worker_exits_on_sigterm_to_its_process_group_after_a_task(tmp_path):
    log = open(tmp_path / "worker.log", "w+")  # noqa: SIM115
    worker, client = start_worker(
        "",
        tmp_path,
        "shutdown",
        "--pool=prefork",
        "--concurrency=8",  # seven processes waiting for the pipe's lock, not one
        "--loglevel=INFO",
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as honcho starts it
    )
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
