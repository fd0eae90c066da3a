"""`python -m bench`: run the workloads of issue 10, print their figures and write
bench/results.json.

    python -m bench                 all seven on the database of bench.settings
    python -m bench --only 1,2      some of them
    python -m bench --quick         a tenth of the sizes (a smoke run; figures not comparable)

Each workload runs in a process of its own (with its own throw-away database), so that its
peak memory is its own and not what earlier workloads left behind in the allocator;
`--same-process` runs them one after another in this one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sqlite3
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

WORKLOADS = {
    1: "bench.workloads.w1_staging",
    2: "bench.workloads.w2_drain",
    3: "bench.workloads.w3_provider_bound",
    4: "bench.workloads.w4_pacing",
    5: "bench.workloads.w5_cadence",
    6: "bench.workloads.w6_trigger_tick",
    7: "bench.workloads.w7_discoverer",
}
RESULTS = Path(__file__).resolve().parent / "results.json"


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    import django

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "django": django.get_version(),
        "platform": platform.platform(),
    }


def _warm_up() -> None:
    """What a long-running worker has done long before: URL patterns compiled, templates
    loaded. Whichever variant ran first would otherwise pay for it."""
    import logging

    import post_office.mail  # noqa: F401 (it sets its own INFO log handlers on import)
    from django.template import loader
    from django.urls import reverse

    logging.getLogger("post_office").setLevel(logging.ERROR)
    reverse("unsubscribe", args=["warm-up"])
    loader.get_template("emails/layout.html")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default="", help="comma-separated workload numbers")
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    parser.add_argument("--output", default=str(RESULTS), help="where to write the JSON")
    parser.add_argument(
        "--same-process", action="store_true", help="run every workload in this process"
    )
    args = parser.parse_args(argv)
    chosen = [int(n) for n in args.only.split(",") if n.strip()] or sorted(WORKLOADS)
    if len(chosen) > 1 and not args.same_process:
        return _each_in_its_own_process(chosen, args)

    started = time.perf_counter()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    from bench.db import use_throwaway_postgres

    use_throwaway_postgres()
    import django

    django.setup()
    from django.conf import settings

    from bench.db import migrate, vendor
    from bench.harness import print_workload
    from bench.workloads.common import Context

    migrate()
    _warm_up()
    celery = vendor() == "postgresql" and settings.CELERY_BROKER_URL.startswith("redis://")
    ctx = Context(scale=0.1 if args.quick else 1.0, vendor=vendor(), celery=celery)
    info = machine()
    print(
        f"Herald bench on {ctx.vendor} — {info['nproc']} cores, {info['cpu']}, "
        f"Python {info['python']}, SQLite {info['sqlite']}, Django {info['django']}"
        + (" — QUICK (sizes / 10)" if args.quick else ""),
        flush=True,
    )
    print(f"setup (migrate) {time.perf_counter() - started:.1f} s", flush=True)
    results, failures = [], []
    for number in chosen:
        begun = time.perf_counter()
        try:
            module = importlib.import_module(WORKLOADS[number])
            result = module.run(ctx)
        except Exception:
            failures.append(number)
            print(f"\n{number}. FAILED", flush=True)
            traceback.print_exc()
            continue
        print_workload(result)
        print(f"   ({time.perf_counter() - begun:.1f} s with data building)", flush=True)
        results.append(result)

    total = time.perf_counter() - started
    met = sum(c.met for r in results for c in r.checks)
    count = sum(len(r.checks) for r in results)
    print(f"\n{met} of {count} targets met; whole run {total:.0f} s", flush=True)
    document = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": ctx.vendor,
        "celery_workers": ctx.celery,
        "quick": args.quick,
        "machine": info,
        "seconds": round(total, 1),
        "targets_met": met,
        "targets": count,
        "failed_workloads": failures,
        "workloads": [r.as_dict() for r in results],
    }
    Path(args.output).write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"wrote {args.output}")
    _clean_up(settings)
    return 1 if failures else 0


def _each_in_its_own_process(chosen: list[int], args) -> int:
    """Run `python -m bench --only N` for each workload and merge their results."""
    import subprocess
    import tempfile

    started = time.perf_counter()
    documents, failed = [], []
    with tempfile.TemporaryDirectory(prefix="herald-bench-results-") as folder:
        for number in chosen:
            output = Path(folder) / f"{number}.json"
            command = [sys.executable, "-m", "bench", "--only", str(number), "--output"]
            command += [str(output), *(["--quick"] if args.quick else [])]
            code = subprocess.call(command)
            if code or not output.exists():
                failed.append(number)
                continue
            documents.append(json.loads(output.read_text()))
    if not documents:
        return 1
    workloads = [w for d in documents for w in d["workloads"]]
    met = sum(d["targets_met"] for d in documents)
    count = sum(d["targets"] for d in documents)
    total = time.perf_counter() - started
    print(f"\n{met} of {count} targets met; whole run {total:.0f} s", flush=True)
    merged = {
        **documents[0],
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(total, 1),
        "targets_met": met,
        "targets": count,
        "failed_workloads": failed + [n for d in documents for n in d["failed_workloads"]],
        "workloads": workloads,
        "process_per_workload": True,
    }
    Path(args.output).write_text(json.dumps(merged, indent=2, default=str) + "\n")
    print(f"wrote {args.output}")
    return 1 if merged["failed_workloads"] else 0


def _clean_up(settings) -> None:
    """Remove the throw-away SQLite folder (a PostgreSQL bench database is dropped by the
    next run, and the server itself by `.ci/services.sh stop`)."""
    from django.db import connections

    connections.close_all()
    if getattr(settings, "BENCH_DIR_OWNED", False):
        shutil.rmtree(settings.BENCH_DIR, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
