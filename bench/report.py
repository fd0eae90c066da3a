"""`python -m bench.report [results.json]`: the results as Markdown (the README's table)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.__main__ import RESULTS


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def markdown(document: dict) -> str:
    info = document["machine"]
    lines = [
        f"Measured {document['at']} on {document['database']} — {info['nproc']} cores, "
        f"{info['cpu']}, Python {info['python']}, SQLite {info['sqlite']}, "
        f"Django {info['django']}; whole run {document['seconds']:.0f} s, "
        f"{document['targets_met']} of {document['targets']} targets met.",
        "",
        "| # | workload | variant | wall s | per s | queries | peak MB | Herald × |",
        "|---|---|---|--:|--:|--:|--:|--:|",
    ]
    for w in document["workloads"]:
        figures = []
        if w["herald"]:
            figures.append((w["herald"], "—"))
        figures += [(f, "") for f in w["extra"]]
        figures += [(f, f"{f['herald_ratio']:.2f}×") for f in w["baselines"]]
        for index, (f, ratio) in enumerate(figures):
            queries = "n/a" if f["queries"] is None else f"{f['queries']:,}"
            lines.append(
                f"| {w['number'] if index == 0 else ''} | {w['title'] if index == 0 else ''} "
                f"| {f['label'].strip()} | {f['seconds']:.2f} | {_rate(f['rate'])} "
                f"| {queries} | {f['peak_mb']:.0f} | {ratio} |"
            )
    lines += ["", "| # | target | measured | met |", "|---|---|---|---|"]
    for w in document["workloads"]:
        for c in w["checks"]:
            lines.append(
                f"| {w['number']} | {c['name']}: {c['target']} | {c['value']} "
                f"| {'yes' if c['met'] else '**no**'} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    print(markdown(json.loads(path.read_text())))
