"""A worker on the embedded broker stops on SIGTERM to its process group, as honcho sends
it (Ctrl-C of `make run`): a prefork one hung in billiard's pool finaliser on the task
pipe's lock, left taken by a pool process the same signal ended (config/pool.py); and
`make run`'s worker (the Procfile's) stops before honcho's SIGKILL, 5 s after its SIGTERM,
without cutting the task it runs."""

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.config.workers import procfile_worker_options, start_worker, wait_for_process_group

# honcho SIGKILLs whatever still runs 5 s (its KILL_WAIT) after its SIGTERM: a bound on
# correctness, not a benchmark, with room for a loaded machine.
WITHIN_HONCHOS_GRACE = 4.5


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
            worker.wait(timeout=30)  # it takes 2-3 s
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


def _start_procfile_worker(tmp_path: Path, log):
    return start_worker(
        "",
        tmp_path,
        "procfile",
        *procfile_worker_options(),
        "--include=tests.config.slow_tasks",
        "--loglevel=INFO",
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as honcho starts it
    )


def _stop_within_honchos_grace(worker, log) -> None:
    os.killpg(worker.pid, signal.SIGTERM)  # honcho's terminate
    try:
        wait_for_process_group(worker, WITHIN_HONCHOS_GRACE)
    except AssertionError as error:
        log.seek(0)
        raise AssertionError(f"{error}:\n{log.read()}") from None


def test_the_procfile_worker_stops_within_honchos_grace_when_idle(tmp_path):
    log = open(tmp_path / "worker.log", "w+")  # noqa: SIM115
    worker, client = _start_procfile_worker(tmp_path, log)
    try:
        assert client.send_task("herald.ping", args=["echo"]).get(timeout=60) == "echo"
        _stop_within_honchos_grace(worker, log)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()


def test_the_procfile_worker_finishes_the_task_it_runs_before_it_stops(tmp_path):
    log = open(tmp_path / "worker.log", "w+")  # noqa: SIM115
    worker, client = _start_procfile_worker(tmp_path, log)
    task = tmp_path / "task"
    task.mkdir()
    try:
        client.send_task("tests.sleep_then_write", args=[1.0, str(task)])
        deadline = time.monotonic() + 60
        while not (task / "started").exists():  # a real process: nothing to fake
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
        _stop_within_honchos_grace(worker, log)
        assert (task / "done").read_text() == "done"
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        log.close()
