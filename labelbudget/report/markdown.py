"""results.md: the report a person reads (tables, findings, calibration, fitted curves, diagnostics)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from labelbudget.report.aggregate import METRICS, ReportConfig
from labelbudget.report.curves import curves_markdown
from labelbudget.runs import budget_name


def probe_markdown(probe: dict) -> list[str]:
    """Phone accuracy per layer and upstream, the best layer of each in bold (empty without probes)."""
    if not probe:
        return []
    depth = max((len(pr.get("layers", [])) for pr in probe.values()), default=0)
    lines = ["", "## Linear phone probe (frame accuracy, weighted over test sets)", "",
             "A linear softmax classifier per layer on single frames, fitted on a fixed labeled subset "
             "(`probe.train_utterances`), scored on every test frame (weights: each test set's share of frames). "
             "Layer 0 is the input embedding (log-mel for fbank); chance: always the most frequent training "
             "class. Best layer in bold. A single fbank frame sees 25 ms of audio, an encoder frame (100 -> 25 Hz "
             "convolutions, convolutional positions) hundreds of ms even at layer 0: a random encoder can beat "
             "fbank here through context alone; compare trained encoders with `random`.", "",
             "| upstream | chance | " + " | ".join(f"layer {k}" for k in range(depth)) + " | best layer |",
             "|---" * (depth + 3) + "|"]
    for u, pr in probe.items():
        if "accuracy" not in pr:
            lines.append(f"| {u} | " + " | ".join(["n/a"] * (depth + 1)) + f" | skipped: {pr.get('skipped')} |")
            continue
        cells = []
        for k in range(depth):
            acc = pr["accuracy"].get(str(k))
            cells.append("" if acc is None else (f"**{acc['weighted']:.3f}**" if k == pr["best_layer"]
                                                 else f"{acc['weighted']:.3f}"))
        lines.append(f"| {u} | {pr['chance']['weighted']:.3f} | " + " | ".join(cells)
                     + f" | {pr['best_layer']} |")
    return lines


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:+.1%}" if pct else f"{v:.3f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def calibration_markdown(result: dict, cfg: ReportConfig) -> list[str]:
    """The topline against the control, per-budget verdicts of every pair, and the share-of-gap scale."""
    comps, cal = result.get("comparisons") or {}, result.get("calibration") or {}
    if not comps:
        return []
    budgets = [budget_name(b) for b in cfg.budgets_min]
    m = result["judged_on"].upper()
    lines = ["", "## Per-budget comparisons", "",
             f"Each pair: candidate minus reference, weighted {m}, {cfg.ci:.0%} paired bootstrap interval; "
             "holds when it lies below zero.", "",
             "| pair | " + " | ".join(f"{b} min" for b in budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    for name, c in comps.items():
        cells = (f"{c['verdicts'][b]} [{c['intervals'][b][0]:+.3f}, {c['intervals'][b][1]:+.3f}]" for b in budgets)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sens = cal.get("sensitivity")
    if sens:
        top = sens["topline"]
        lines += ["", "## Calibration (not SSL)", "",
                  f"`{top}` is the same encoder, recipe and updates trained on each masked frame's true phone: a "
                  "topline, never counted in F0-F3. "
                  f"**{sens['claim']}: {sens['verdict']}** ({sens['detail']}). If it does not hold, the downstream "
                  "is the bottleneck and F0 says nothing about the pretraining.", ""]
        if cal.get("error_gap"):
            lines += [f"Share of the `{cfg.control}`-to-`{top}` weighted {m} gap each SSL size closes (0% = never "
                      f"trained, 100% = topline; [{cfg.ci:.0%} interval]):", "",
                      "| upstream | " + " | ".join(f"{b} min" for b in budgets) + " |",
                      "|---" * (len(budgets) + 1) + "|"]
            for s, by_b in cal["error_gap"].items():
                cells = (f"{_pct(by_b[b]['share'])}" + (f" [{_pct(by_b[b]['interval'][0])}, "
                                                        f"{_pct(by_b[b]['interval'][1])}]"
                                                        if by_b[b]["interval"] else "") for b in budgets)
                lines.append(f"| {s} | " + " | ".join(cells) + " |")
        if cal.get("probe_gap"):
            lines += ["", f"Phone probe on the same scale (`{cfg.control}`'s best layer = 0%, `{top}`'s = 100%):", "",
                      "| upstream | best layer | per layer |", "|---|---|---|"]
            for s, v in cal["probe_gap"].items():
                per = ", ".join(f"{k}: {_pct(x)}" for k, x in v["layers"].items())
                lines.append(f"| {s} | {_pct(v['best'])} | {per} |")
    return lines


def _error_tables(result: dict, cfg: ReportConfig, budgets: list[str], head: list[str]) -> list[str]:
    m, lines = result["judged_on"], []
    for metric in METRICS:
        lines += [f"## Weighted {metric.upper()} (mean ± std over seeds; [95% bootstrap interval of the "
                  "mean])", "", *head]
        for u in cfg.upstreams:
            cells = []
            for b in budgets:
                w = result["table"][u][b]["weighted"]
                cells.append(f"{w[metric]:.3f} ± {w[f'{metric}_std']:.3f} "
                             f"[{w[f'{metric}_ci'][0]:.3f}, {w[f'{metric}_ci'][1]:.3f}]")
            lines.append(f"| {u} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"## Relative degradation of weighted {m.upper()} against the largest budget", "", *head]
    for u in cfg.upstreams:
        cells = (_fmt(result["table"][u][b]["weighted"][f"{m}_rel_degradation"], pct=True) for b in budgets)
        lines.append(f"| {u} | " + " | ".join(cells) + " |")
    return lines


def _findings(result: dict, cfg: ReportConfig) -> list[str]:
    conv = result["converged"]
    lines = ["", "## Findings", "",
             f"Verdicts: **holds** only when the {cfg.ci:.0%} paired bootstrap interval (utterances and seeds) "
             "of every difference the claim makes lies on its side; **inconclusive** when one straddles zero; "
             "**invalid** when an upstream involved is unsound (degenerate, not converged, pretraining "
             "non-finite or missing).",
             f"Downstream convergence: {conv['converged']}/{conv['runs']} finetunes stopped by patience "
             f"(not by the step maximum): the comparison is "
             + ("**valid**." if conv["valid"] else f"**not valid** (needs >= {cfg.min_converged:.0%})."), ""]
    for k in ("F0", "F1", "F2", "F3"):
        f = result["findings"][k]
        verdict = f["verdict"] if f["verdict"] == "not evaluated" else f"**{f['verdict']}**"
        lines.append(f"- **{k}** ({f['claim']}): {verdict}. {f['detail']}.")
        if f.get("numbers") and k in ("F0", "F1"):
            lines.append("  " + "; ".join(f"{b} min: " + ", ".join(f"{u} {v:.3f}" for u, v in nums.items())
                                           for b, nums in f["numbers"].items()))
    return lines


def _match(result: dict, cfg: ReportConfig) -> list[str]:
    match, m = result["match"], result["judged_on"]
    if not match:
        return []
    if match["ratio"]:
        at_least = "at least " if match["kind"] == "at_most" else ""
        reach = f"reaches it at {match['text']}: {at_least}{match['ratio']:.3g}x less labeled data."
    else:
        reach = "does not reach it within the budgets (no extrapolation)."
    return ["", "## Label hours the larger model needs to match the smaller one", "",
            f"`{cfg.smaller}` at the largest budget ({match['largest_hours']:.3g} h): weighted "
            f"{m.upper()} {match['target']:.3f}. `{cfg.larger}` {reach}"]


def _per_run_tables(result: dict, cfg: ReportConfig, budgets: list[str]) -> list[str]:
    """Per test set, upstream soundness and training diagnostics."""
    m = result["judged_on"]
    lines = ["", f"## {m.upper()} per test set (mean over seeds)", "",
             "| upstream | budget (min) | " + " | ".join(result["test_sets"]) + " |",
             "|---|---" + "|---" * len(result["test_sets"]) + "|"]
    for u in cfg.upstreams:
        for b in budgets:
            tests = result["table"][u][b]["tests"]
            lines.append(f"| {u} | {b} | " + " | ".join(f"{tests[t][m]:.3f}" for t in result["test_sets"]) + " |")
    lines += ["", "## Upstream soundness", "", "| upstream | finetunes | converged (patience) | degenerate "
              "| problems |", "|---|---|---|---|---|"]
    for u, h in result["health"].items():
        lines.append(f"| {u} | {h['runs']} | {h['converged']} | {len(h['degenerate'])} "
                     f"| {'; '.join(h['problems']) or 'none'} |")
    lines += ["", "## Training diagnostics (mean over seeds)", "",
              "| upstream | budget (min) | steps | stopped by patience | stopped at max_steps | degenerate "
              "| best dev CER | layer weights |", "|---|---|---|---|---|---|---|---|"]
    for u in cfg.upstreams:
        for b in budgets:
            tr = result["table"][u][b].get("training", {})
            lw = tr.get("layer_weights")
            weights = ", ".join(f"{w:.2f}" for w in lw) if lw else "n/a"
            steps = f"{tr['steps']:.0f}" if "steps" in tr else "n/a"
            lines.append(f"| {u} | {b} | {steps} | {tr.get('stopped_early', 'n/a')} "
                         f"| {tr.get('stopped_at_max', 'n/a')} | {tr.get('degenerate', 0)} "
                         f"| {_fmt(tr.get('best_dev_cer'))} "
                         f"| {weights} |")
    return lines


def _pretraining(result: dict) -> list[str]:
    if not result.get("pretraining"):
        return []
    lines = ["", "## Pretraining (evidence for the premise F0; a topline's row is its calibration)", "",
             "| run | parameters | updates | wall (s) | final loss | masked accuracy | target usage "
             "| target perplexity | phone probe (held-out, best layer) |", "|---|---|---|---|---|---|---|---|---|"]
    for size, pm in result["pretraining"].items():
        lines.append(f"| {size} | {pm.get('parameters', 0) / 1e6:.1f}M | {pm.get('steps', 'n/a')} "
                     f"| {pm.get('wall_seconds', 'n/a')} | {_fmt(pm.get('train/loss'))} "
                     f"| {_fmt(pm.get('train/masked_acc'))} | {_fmt(pm.get('train/target_usage'))} "
                     f"| {pm.get('train/target_ppl', float('nan')):.0f} | {_fmt(pm.get('probe/phone_acc'))} |")
    return lines


def results_markdown(result: dict, cfg: ReportConfig, figures: Sequence[str]) -> str:
    m = result["judged_on"]
    budgets = [budget_name(b) for b in cfg.budgets_min]
    head = ["| upstream | " + " | ".join(f"{b} min ({float(b) / 60:.3g} h)" for b in budgets) + " |",
            "|---" * (len(budgets) + 1) + "|"]
    lines = ["# Sample efficiency: error rate against labeled hours", "",
             f"Upstreams: {', '.join(cfg.upstreams)}; budgets: {', '.join(budgets)} min; seeds: {cfg.seeds}; "
             f"test sets: {', '.join(result['test_sets'])}.",
             f"Weighted error = sum over test sets of w_i x error_i, weights: {result['weights_source']} "
             f"({', '.join(f'{t} {w:.3f}' for t, w in result['weights'].items())}).",
             f"**Findings judged on weighted {m.upper()}**: {result['judged_why']}.", ""]
    lines += _error_tables(result, cfg, budgets, head) + _findings(result, cfg) + calibration_markdown(result, cfg)
    lines += _match(result, cfg)
    if result.get("curves"):
        lines += curves_markdown(result["curves"][m], cfg.ci)
    lines += _per_run_tables(result, cfg, budgets) + probe_markdown(result.get("probe", {})) + _pretraining(result)
    lines += ["", "## Figures", ""] + [f"- [{Path(f).name}]({f})" for f in figures]
    lines += ["- [timeline.md](timeline.md): when each stage ran and for how long (a Gantt chart), written by the "
              "flow after the run (`labelbudget run`; not by a plain `dvc repro`)", ""]
    return "\n".join(lines)
