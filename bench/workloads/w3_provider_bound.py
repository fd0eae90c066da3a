"""Workload 3 — provider-bound dispatch: 2,000 deliveries through a provider fake that takes
50 ms per message, at concurrency C = 5 and C = 20. Target: at least 0.9 × C / 50 ms.

On PostgreSQL with Redis (`make bench-postgres`): C Celery worker processes (prefork pool)
each run the real `herald.dispatch_due` task. On SQLite: C threads in this process, each
calling `dispatch_due` on its own connection (SQLite has no row locks: its write transaction
serializes the claims, which are short next to the 50 ms sends). Each concurrency drains
REPEAT fresh outboxes (on Celery with one worker) and keeps the fastest, as the bench does
for its other quick variants.

Claims are sized to the provider: DISPATCH_BATCH_SIZE=20 (one second of a 50 ms provider).
At the default of 200, one claim holds ten seconds of work and 2,000 rows make only ten
claims, so at C = 20 half the workers would find nothing to claim. (BENCH_CLAIM in the
environment tries another claim size.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from bench.db import wipe
from bench.harness import REPEAT, Figure, QueryCounter, Workload, best, measure
from bench.workloads.common import Context

LATENCY = 0.05
# Celery: the deliveries are staged this far ahead, then made due after the warm-up; the
# dispatch task hints itself only about deliveries due within a minute.
WARM_UP_AHEAD = timedelta(hours=1)
CLAIM = int(os.environ.get("BENCH_CLAIM", "20"))
ROOT = Path(__file__).resolve().parents[2]


def run(ctx: Context) -> Workload:
    n = ctx.size(2_000, minimum=200)
    how = "Celery workers (prefork) on PostgreSQL + Redis" if ctx.celery else "threads"
    result = Workload(
        3, "Provider-bound dispatch", f"{n:,} emails, 50 ms provider, C = 5 and 20, {how}"
    )
    for concurrency in (5, 20):
        runs = _runs(ctx, n, concurrency)
        figure = best(runs)
        ideal = concurrency / LATENCY
        result.notes.append(
            f"C = {concurrency}, each run: "
            + ", ".join(f"{run.rate / ideal:.2f}×" for run in runs)
            + " (the best kept)"
        )
        if result.herald is None:
            result.herald = figure
        else:
            result.extra.append(figure)
        result.check(
            f"rate at C = {concurrency}",
            f"≥ {0.9 * ideal:,.0f}/s (0.9 × C / 50 ms)",
            f"{figure.rate:,.0f}/s = {figure.rate / ideal:.2f} × C / 50 ms",
            figure.rate >= 0.9 * ideal,
        )
    result.notes.append(
        f"DISPATCH_BATCH_SIZE={CLAIM}: a claim holds about one second of provider time "
        "(the default 200 would leave workers idle at C = 20)"
    )
    if not ctx.celery:
        result.notes.append(
            "SQLite: threads calling dispatch_due (make bench-postgres runs Celery workers)"
        )
    return result


def _stage(n: int, *, ahead: timedelta = timedelta(0)):
    """n deliveries, due `ahead` of now; returns now."""
    from bench.workloads.w2_drain import stage

    wipe()
    now = timezone.now()
    stage(n, now=now + ahead)
    return now


def _runs(ctx: Context, n: int, concurrency: int) -> list[Figure]:
    """REPEAT drains at this concurrency (the bench keeps the best, as for its other quick
    variants: this machine's noise only ever adds time)."""
    label = f"Herald at C = {concurrency} ({'Celery' if ctx.celery else 'threads'})"
    backend = "bench.fakes.SlowEmailBackend"
    with override_settings(EMAIL_BACKEND=backend, DISPATCH_BATCH_SIZE=CLAIM):
        if ctx.celery:
            figures = _celery(label, n, concurrency, backend)
        else:
            figures = [_threads(label, n, concurrency, _stage(n)) for _ in range(REPEAT)]
    return figures


def _threads(label: str, n: int, concurrency: int, now) -> Figure:
    from notifications.dispatch import dispatch_due

    counter = QueryCounter()
    start = threading.Barrier(concurrency + 1)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            connection.ensure_connection()  # a worker's connection is open before work comes
            with counter.installed():
                start.wait()
                dispatch_due(now=now)
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    with measure(label, n, "messages", queries=counter) as figure:
        start.wait()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    _check_drained(n)
    return figure


def _check_drained(n: int) -> None:
    from notifications.models import Delivery

    assert Delivery.objects.filter(status="sent").count() == n


def _celery(label: str, n: int, concurrency: int, backend: str) -> list[Figure]:
    """REPEAT drains by one worker of `concurrency` prefork processes, each of a fresh
    outbox."""
    from celery import Celery

    from notifications.models import Delivery

    hostname = f"bench-{os.getpid()}-{concurrency}@%h"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "BENCH_EMAIL_BACKEND": backend,
        "BENCH_PROVIDER_LATENCY": str(LATENCY),
        "DISPATCH_BATCH_SIZE": str(CLAIM),
        "LOG_LEVEL": "WARNING",
    }
    client = Celery("bench-client", broker=settings.CELERY_BROKER_URL)
    client.control.purge()  # dispatch hints left by earlier staging
    log = open(Path(settings.BENCH_DIR) / f"celery-{concurrency}.log", "w")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
            "--pool=prefork", f"--concurrency={concurrency}", "--loglevel=WARNING",
            f"--hostname={hostname}", "--without-gossip", "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_ready(client, worker)
        host = hostname.replace("%h", socket.gethostname())
        figures = []
        for _ in range(REPEAT):
            # Staged ahead: the dispatch its staging asks for ("look now") and the warm-up's
            # find nothing due, so nothing is sent before the clock starts.
            _stage(n, ahead=WARM_UP_AHEAD)
            _warm_up(client, host, concurrency)
            Delivery.objects.update(send_at=timezone.now())  # due now, as if just staged
            with connection.cursor() as cursor:  # the update's dead row versions, off the clock
                cursor.execute(
                    f"VACUUM ANALYZE {connection.ops.quote_name(Delivery._meta.db_table)}"
                )
            left = Delivery.objects.filter(status__in=["scheduled", "sending"])
            with measure(label, n, "messages", queries=QueryCounter()) as figure:
                for _ in range(concurrency):
                    client.send_task("herald.dispatch_due")
                deadline = time.monotonic() + 300
                while left.exists():
                    if time.monotonic() > deadline:
                        raise TimeoutError("the workers did not drain the outbox in 5 minutes")
                    time.sleep(0.02)
            figure.queries = None  # issued by the worker processes, not counted here
            figure.note = f"{concurrency} prefork worker processes"
            _check_drained(n)
            figures.append(figure)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        client.control.purge()
    return figures


def _warm_up(client, hostname: str, concurrency: int) -> None:
    """What a worker that has been running did long before: its child processes have run
    the dispatch task (the deliveries are staged WARM_UP_AHEAD, so it finds nothing due and
    sends nothing), three per child so that every idle child is likely to get some (fair
    scheduling gives no guarantee, and Celery gave most to a few). A child's first run
    took 24 ms of CPU against 11 ms for the next (one process, an empty outbox): 20 of
    them at once on 2 cores delayed the first handovers. Their database connections were
    opened as they started (bench.celery_app), so the drain measures a worker whose
    children have used theirs within CONN_MAX_AGE. Waits until this worker has taken them
    all and has none running or waiting."""
    tasks = 3 * concurrency
    inspector = client.control.inspect(destination=[hostname], timeout=1)
    before = _dispatches_taken(inspector)
    for _ in range(tasks):
        client.send_task("herald.dispatch_due")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        taken = _dispatches_taken(inspector) - before
        running = any((inspector.active() or {hostname: [None]}).values())
        waiting = any((inspector.reserved() or {hostname: [None]}).values())
        if taken >= tasks and not running and not waiting:
            return
        time.sleep(0.1)
    raise TimeoutError("the Celery worker did not finish its warm-up tasks in a minute")


def _dispatches_taken(inspector) -> int:
    """Dispatch tasks this worker has taken since it started."""
    return sum(
        s.get("total", {}).get("herald.dispatch_due", 0) for s in (inspector.stats() or {}).values()
    )


def _wait_ready(client, worker: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError("the Celery worker exited; see its log in the bench folder")
        if client.control.ping(timeout=0.5):
            return
    raise TimeoutError("the Celery worker did not answer a ping in 2 minutes")
