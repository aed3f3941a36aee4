"""The report's figures: error against labeled hours per upstream, per test set, pretraining curves and the phone
probe per layer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from labelbudget.report.aggregate import ReportConfig
from labelbudget.runs import budget_name


def plot_curves(result: dict, cfg: ReportConfig, metric: str, path: str | Path) -> None:
    """Weighted error against labeled hours (log x), one line per upstream, bootstrap band, seed spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    hours = [b / 60 for b in cfg.budgets_min]
    for u in cfg.upstreams:
        ws = [result["table"][u][budget_name(b)]["weighted"] for b in cfg.budgets_min]
        mean = [w[metric] for w in ws]
        top = u in cfg.toplines  # a calibration, not an SSL result: dashed and labelled so
        band = (result.get("curves") or {}).get(metric, {}).get("bands", {}).get(u)
        label = f"{u} (calibration)" if top else u
        if band:  # the fitted power law over the points, its band from the bootstrap fits
            line, = ax.plot(band["hours"], band["fit"], label=label, linestyle="--" if top else "-")
            ax.plot(hours, mean, marker="o", linestyle="none", color=line.get_color())
            if band["low"]:
                ax.fill_between(band["hours"], band["low"], band["high"], color=line.get_color(), alpha=0.18,
                                linewidth=0)
        else:  # no fit: the points joined, the band of each mean
            line, = ax.plot(hours, mean, marker="o", label=label, linestyle="--" if top else "-")
            ax.fill_between(hours, [w[f"{metric}_ci"][0] for w in ws], [w[f"{metric}_ci"][1] for w in ws],
                            color=line.get_color(), alpha=0.18, linewidth=0)
        ax.errorbar(hours, mean, yerr=[w[f"{metric}_std"] for w in ws], fmt="none", ecolor=line.get_color(),
                    capsize=3, linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("labeled hours (log scale)")
    ax.set_ylabel(f"weighted {metric.upper()}")
    fitted = bool((result.get("curves") or {}).get(metric, {}).get("bands"))
    what = "line: fitted c + a·h^-b, band: its 95% bootstrap CI" if fitted else "band: 95% bootstrap CI"
    ax.set_title(f"Weighted {metric.upper()} vs labeled hours\n({what}; points: seed means, bars: seed std)",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="upstream")
    _save(fig, path)


def plot_per_test(result: dict, cfg: ReportConfig, metric: str, path: str | Path) -> None:
    """One panel per test set: error against labeled hours per upstream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = result["test_sets"]
    cols = min(3, len(tests))
    rows = math.ceil(len(tests) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    hours = [b / 60 for b in cfg.budgets_min]
    for ax, t in zip(axes.flat, tests, strict=False):
        for u in cfg.upstreams:
            ax.plot(hours, [result["table"][u][budget_name(b)]["tests"][t][metric] for b in cfg.budgets_min],
                    marker="o", label=u)
        ax.set_xscale("log")
        ax.set_title(t)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xlabel("labeled hours")
    for ax in axes.flat[len(tests):]:
        ax.axis("off")
    axes[0][0].set_ylabel(metric.upper())
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{metric.upper()} per test set vs labeled hours (mean over seeds)")
    _save(fig, path)


def plot_probe(probe: Mapping[str, dict], path: str | Path) -> bool:
    """Phone probe accuracy against layer, one line per upstream (its best layer starred, its chance dotted)."""
    probe = {u: pr for u, pr in probe.items() if "accuracy" in pr}
    if not probe:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (u, pr) in enumerate(probe.items()):
        color = f"C{i}"
        layers = sorted(int(k) for k in pr["accuracy"])
        accs = [pr["accuracy"][str(k)]["weighted"] for k in layers]
        if len(layers) == 1:  # one hidden state (fbank): a level to compare every layer of the others with
            ax.axhline(accs[0], linestyle="--", color=color, label=f"{u} (one layer)")
        else:
            ax.plot(layers, accs, marker="o", color=color, label=u)
        ax.plot([pr["best_layer"]], [pr["best"]], marker="*", markersize=16, color=color)
        ax.axhline(pr["chance"]["weighted"], color=color, linestyle=":", linewidth=1)
    ax.set_xlabel("layer (0: input embedding)")
    ax.set_ylabel("phone frame accuracy (weighted over test sets)")
    ax.set_title("Linear phone probe per layer (star: best layer, dotted: majority class)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(title="upstream")
    _save(fig, path)
    return True


def _save(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    from labelbudget.io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_pretraining(histories: Mapping[str, Path], path: str | Path) -> bool:
    """Loss, masked accuracy, target usage (and the phone probe, when monitored) against updates, one line per
    SSL size (Lightning CSV logs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    panels = [("train/loss", "loss"), ("train/masked_acc", "masked accuracy"), ("train/target_usage", "target usage")]
    frames = {size: pd.read_csv(csv) for size, csv in histories.items()}
    if any("probe/phone_acc" in df for df in frames.values()):
        panels.append(("probe/phone_acc", "phone probe (held-out, best layer)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6))
    drawn = False
    for size, df in frames.items():
        for ax, (col, title) in zip(axes, panels, strict=True):
            if col in df:
                d = df[["step", col]].dropna()
                ax.plot(d["step"], d[col], label=size)
                ax.set_title(title)
                ax.set_xlabel("update")
                drawn = True
    if drawn:
        axes[0].legend()
        _save(fig, path)
    plt.close(fig)
    return drawn
