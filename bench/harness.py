"""How a workload is measured and reported: wall time, queries issued, peak memory, the ratio
of Herald to each baseline, and the targets of issue 10."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from django.db import connection, connections

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE / 1e6
    except OSError:  # not Linux: the peak so far is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


class _RssSampler(threading.Thread):
    """Samples the resident size every few milliseconds: the peak of the whole process
    (Python objects, SQLite's cache, driver buffers), not only what tracemalloc sees, and
    without tracemalloc's slowdown of the code being timed."""

    def __init__(self, every: float = 0.005):
        super().__init__(daemon=True)
        self.every = every
        self.start_mb = rss_mb()
        self.peak_mb = self.start_mb
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.every):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


class QueryCounter:
    """A database execute wrapper counting every statement sent (thread-safe, so one
    counter can be installed on the connections of several threads)."""

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, execute, sql, params, many, context):
        with self._lock:
            self.count += 1
        return execute(sql, params, many, context)

    @contextmanager
    def installed(self, alias: str = "default"):
        with connections[alias].execute_wrapper(self):
            yield self


@dataclass
class Figure:
    """One measured run: Herald or a baseline."""

    label: str
    items: int
    unit: str  # rows, messages, decisions, kiosks, runs
    seconds: float = 0.0
    queries: int | None = None
    peak_mb: float = 0.0
    delta_mb: float = 0.0
    note: str = ""

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else float("inf")


@contextmanager
def measure(label: str, items: int, unit: str, *, queries: QueryCounter | None = None):
    """Time the block; count the queries of this thread's connection (or of the counter
    given, which the block installs wherever it runs queries)."""
    figure = Figure(label, items, unit)
    gc.collect()
    _give_back_free_memory()
    counter = queries or QueryCounter()
    sampler = _RssSampler()
    sampler.start()
    wrapper = connection.execute_wrapper(counter) if queries is None else _null()
    with wrapper:
        started = time.perf_counter()
        try:
            yield figure
        finally:
            figure.seconds = time.perf_counter() - started
            sampler.stop()
    figure.queries = counter.count
    figure.peak_mb = sampler.peak_mb
    figure.delta_mb = sampler.peak_mb - sampler.start_mb


def _give_back_free_memory() -> None:
    """Return the memory earlier workloads freed to the system (glibc keeps it otherwise),
    so a peak measures what this block holds, not what ran before it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def _null():
    yield


@dataclass
class Check:
    """One target of the issue and whether it is met."""

    name: str
    target: str
    value: str
    met: bool


@dataclass
class Workload:
    number: int
    title: str
    size: str
    herald: Figure | None = None
    baselines: list[tuple[Figure, str]] = field(default_factory=list)  # (figure, target)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: list[Figure] = field(default_factory=list)  # more Herald figures (phases, C=...)

    def ratio(self, baseline: Figure) -> float:
        if self.herald is None:
            return float("nan")
        """How many times faster Herald is than the baseline (its time / Herald's time,
        per item)."""
        return self.herald.rate / baseline.rate

    def compare(self, baseline: Figure, *, at_least: float | None, target: str = "") -> None:
        """Record a baseline and, with `at_least`, the check Herald ≥ at_least × it."""
        self.baselines.append((baseline, target))
        if at_least is not None:
            ratio = self.ratio(baseline)
            self.check(
                f"vs {baseline.label}",
                target or f"≥ {at_least:g}×",
                f"{ratio:.2f}×",
                ratio >= at_least,
            )

    def check(self, name: str, target: str, value: str, met: bool) -> None:
        self.checks.append(Check(name, target, value, bool(met)))

    def as_dict(self) -> dict:
        def fig(f: Figure) -> dict:
            return {**asdict(f), "rate": round(f.rate, 1)}

        return {
            "number": self.number,
            "title": self.title,
            "size": self.size,
            "herald": fig(self.herald) if self.herald else None,
            "extra": [fig(f) for f in self.extra],
            "baselines": [
                {**fig(f), "target": t, "herald_ratio": round(self.ratio(f), 3)}
                for f, t in self.baselines
            ],
            "checks": [asdict(c) for c in self.checks],
            "notes": self.notes,
        }


def _num(value: float) -> str:
    if value == float("inf"):
        return "∞"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


def print_workload(result: Workload, out: Callable[[str], None] = print) -> None:
    out("")
    out(f"{result.number}. {result.title} — {result.size}")
    header = (
        f"   {'variant':<46} {'wall s':>8} {'per s':>10} {'queries':>8} {'peak MB':>8}"
        f" {'Δ MB':>7} {'Herald ×':>9}"
    )
    out(header)
    rows: list[tuple[Figure, str]] = []
    if result.herald:
        rows.append((result.herald, "—"))
    rows += [(f, "") for f in result.extra]
    rows += [(f, f"{result.ratio(f):.2f}×") for f, _ in result.baselines]
    for figure, ratio in rows:
        queries = "n/a" if figure.queries is None else f"{figure.queries:,}"
        out(
            f"   {figure.label[:46]:<46} {figure.seconds:>8.3f} {_num(figure.rate):>10}"
            f" {queries:>8} {figure.peak_mb:>8.0f} {figure.delta_mb:>7.0f} {ratio:>9}"
        )
    for check in result.checks:
        mark = "met" if check.met else "MISSED"
        out(f"   target {check.name}: {check.value} (target {check.target}) — {mark}")
    for note in result.notes:
        out(f"   note: {note}")


REPEAT = 3  # runs of each quick variant; the fastest is kept (the machine is noisy)


def best(figures: list[Figure]) -> Figure:
    """The fastest of several runs of one variant, as timeit reports: noise only ever
    adds time. The figure says how many runs it was the best of."""
    fastest = min(figures, key=lambda f: f.seconds)
    if len(figures) > 1:
        fastest.label = f"{fastest.label} [best of {len(figures)}]"
        fastest.peak_mb = max(f.peak_mb for f in figures)
    return fastest
