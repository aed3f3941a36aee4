"""The run's timeline from reports/timings.csv: a Gantt chart (one lane per concurrent slot, one colour per
stage group) and a per-group table, in reports/timeline.md. Written by the flow after a run: wall times are
facts about one run on one machine, not DVC outputs."""

from __future__ import annotations

import csv
from pathlib import Path

TIMELINE = "reports/timeline.md"
GANTT = "reports/timeline.png"


def read_timings(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{**r, "start_s": float(r["start_s"]), "seconds": float(r["seconds"])} for r in csv.DictReader(f)]


def lanes(rows: list[dict], slack: float = 1.0) -> list[int]:
    """The first free lane of each stage in start order: as many lanes as stages ever ran side by side. A stage
    that starts within `slack` seconds of another's recorded end takes its lane (the end is stamped after DVC
    returns, the next start before its own bookkeeping)."""
    ends: list[float] = []
    out = []
    for r in rows:
        free = next((k for k, end in enumerate(ends) if end <= r["start_s"] + slack), None)
        if free is None:
            ends.append(0.0)
            free = len(ends) - 1
        ends[free] = r["start_s"] + r["seconds"]
        out.append(free)
    return out


def group_table(rows: list[dict]) -> list[dict]:
    groups: dict[str, dict] = {}
    for r in rows:
        g = groups.setdefault(r["group"], {"group": r["group"], "stages": 0, "stage_seconds": 0.0,
                                           "first_start": r["start_s"], "last_end": 0.0})
        g["stages"] += 1
        g["stage_seconds"] += r["seconds"]
        g["first_start"] = min(g["first_start"], r["start_s"])
        g["last_end"] = max(g["last_end"], r["start_s"] + r["seconds"])
    return list(groups.values())


def plot_gantt(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lane = lanes(rows)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    colours = {g: plt.get_cmap("tab10")(k % 10) for k, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.6 * (max(lane, default=0) + 1)))
    for r, k in zip(rows, lane, strict=True):
        ax.barh(k, r["seconds"] / 60, left=r["start_s"] / 60, height=0.8, color=colours[r["group"]],
                edgecolor="white", linewidth=0.5)
        if r["seconds"] >= 60:  # long enough to carry its name
            ax.text((r["start_s"] + r["seconds"] / 2) / 60, k, r["stage"].split("@")[-1], ha="center",
                    va="center", fontsize=6, color="white")
    ax.set_yticks(range(max(lane, default=0) + 1), [f"slot {k + 1}" for k in range(max(lane, default=0) + 1)])
    ax.invert_yaxis()
    ax.set_xlabel("minutes since the first stage started")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours[g]) for g in groups], labels=groups,
              ncol=min(len(groups), 9), fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)
    ax.set_title("Stage timeline of the last flow run (one bar per stage; a slot is one stage running)", pad=28)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_timeline(root: Path, timings_csv: Path) -> Path | None:
    """reports/timeline.md (+ its Gantt chart) from a timings file; None when no stage ran."""
    rows = read_timings(timings_csv)
    if not rows:
        return None
    plot_gantt(rows, root / GANTT)
    span = max(r["start_s"] + r["seconds"] for r in rows)
    busy = sum(r["seconds"] for r in rows)
    lines = ["# Run timeline", "",
             f"{len(rows)} stages ran in {span / 60:.1f} min of wall time ({busy / 60:.1f} stage-minutes: "
             f"{busy / max(span, 1e-9):.2f} stages running on average). Source: `reports/timings.csv`, written by "
             "the flow; stages DVC skipped as up to date are not in it.", "",
             f"![stage timeline]({Path(GANTT).relative_to('reports')})", "",
             "| group | stages | stage-minutes | share | first start (min) | last end (min) |",
             "|---|---|---|---|---|---|"]
    for g in group_table(rows):
        lines.append(f"| {g['group']} | {g['stages']} | {g['stage_seconds'] / 60:.1f} | "
                     f"{g['stage_seconds'] / busy:.0%} | {g['first_start'] / 60:.1f} | {g['last_end'] / 60:.1f} |")
    path = root / TIMELINE
    path.write_text("\n".join(lines) + "\n")
    return path
