"""What a run leaves behind: reports/timings.csv and the Prefect artifacts (stages, metrics, report link)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

REPORT = "reports/results.md"
METRICS = "reports/metrics.json"
TIMINGS = "reports/timings.csv"  # written by the flow, not a DVC output: when each stage ran and for how long


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def metrics_markdown(metrics: Any) -> str:
    """A markdown table of a metrics JSON: a list of records (one row each), or nested dicts whose last key
    is the column (e.g. {"small": {"60": {"in_domain": 0.3, "weighted": 0.4}}} gives row small/60)."""
    if isinstance(metrics, list) and all(isinstance(r, dict) for r in metrics):
        rows = [{k: v for k, v in r.items() if not isinstance(v, (dict, list))} for r in metrics]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
        return "\n".join(lines)

    leaves: list[tuple[tuple[str, ...], Any]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, (*path, str(key)))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, (*path, str(i)))
        else:
            leaves.append((path, node))

    walk(metrics, ())
    table: dict[str, dict[str, Any]] = {}
    for path, value in leaves:
        row, column = ("/".join(path[:-1]), path[-1]) if len(path) > 1 else ("/".join(path), "value")
        table.setdefault(row, {})[column] = value
    columns = list(dict.fromkeys(c for cells in table.values() for c in cells))
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [
        f"| {row} | " + " | ".join(_cell(cells.get(c, "")) for c in columns) + " |"
        for row, cells in table.items()
    ]
    return "\n".join(lines)


def write_timings(root: Path, status: dict[str, str], timings: dict[str, tuple[float, float]]) -> Path:
    """One row per stage this run executed, in start order: stage group, outcome, start (seconds after the
    first stage started, and local time) and duration."""
    import csv
    from datetime import datetime

    t0 = min((t[0] for t in timings.values()), default=0.0)
    path = root / TIMINGS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stage", "group", "outcome", "start_s", "seconds", "started_at"])
        for name, (start, end) in sorted(timings.items(), key=lambda kv: kv[1][0]):
            w.writerow([name, name.split("@")[0], status.get(name, ""), round(start - t0, 1),
                        round(end - start, 1), datetime.fromtimestamp(start).isoformat(timespec="seconds")])
    return path


def publish(root: Path, status: dict[str, str], timings: dict[str, tuple[float, float]], complete: bool
            ) -> None:
    """timings.csv, and Prefect artifacts: what each stage did; the metrics table and the report's path when
    the run completed (after a failure they may be stale: publish only what this run stands by)."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    rows = [
        f"| `{name}` | {outcome} | "
        + (f"{timings[name][1] - timings[name][0]:.1f}" if name in timings else "")
        + " |"
        for name, outcome in status.items()
    ]
    if timings:
        from labelbudget.orchestrate.timeline import write_timeline

        write_timeline(root, write_timings(root, status, timings))
    create_markdown_artifact(
        "| stage | outcome | seconds |\n|---|---|---|\n" + "\n".join(rows),
        key="labelbudget-stages",
        description="What each DVC stage did in this run",
    )
    metrics, report = root / METRICS, root / REPORT
    if complete and metrics.exists():  # after a failure it may be stale: publish only what this run stands by
        create_markdown_artifact(
            f"# Metrics ({METRICS})\n\n{metrics_markdown(json.loads(metrics.read_text()))}\n\n"
            f"Full report: `{report}`",
            key="labelbudget-metrics",
            description="Error rates per upstream, budget and seed",
        )
    if complete and report.exists():
        create_link_artifact(
            report.as_uri(), link_text=REPORT, key="labelbudget-report", description=str(report)
        )
