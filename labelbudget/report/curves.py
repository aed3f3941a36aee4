"""Fitted sample-efficiency curves: error(h) = c + a * h^(-b) per upstream (a saturating power law in labeled
hours h), with intervals from the findings' paired bootstrap.

The reference experiment's claims are about a curve's shape: where it saturates (the asymptote c), how many
labeled hours bring it within 2.5% and 10% (relative) of that asymptote, and how many hours the larger model
needs to match the smaller one. The point fit uses the per-seed points; every bootstrap replicate (one shared
resample of utterances and seeds for all budgets and upstreams, so differences are paired) is fitted the same
way and the intervals are percentiles over those fits. Hours inside the measured budgets are interpolated,
outside they are marked as extrapolated, and nothing is read past `EXTRAPOLATION` x the largest budget (such a
figure is reported as beyond it, `inf`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from labelbudget import metrics as M
from labelbudget.runs import budget_name

EXTRAPOLATION = 3.0  # never read a curve past this multiple of the largest budget
WITHIN = {"2.5%": 0.025, "10%": 0.10}  # the reference experiment's two saturation figures


def power_law(h: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return c + a * np.power(h, -b)


B_RANGE = (0.01, 5.0)  # exponents searched; a best fit at either end is a curve the data do not pin down


def _linear_part(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For fixed exponents (x = h^-b per row), the least-squares (a >= 0, c >= 0) of y = c + a x, and its SSE.
    x: (R, N) or (N,), y: (R, N)."""
    xm, ym = x.mean(-1, keepdims=True), y.mean(-1, keepdims=True)
    a = np.maximum(((x - xm) * (y - ym)).sum(-1) / np.maximum(((x - xm) ** 2).sum(-1), 1e-300), 0.0)
    c = ym[..., 0] - a * xm[..., 0]
    neg = c < 0  # the asymptote may not go below zero: refit through the origin
    a = np.where(neg, np.maximum((x * y).sum(-1) / np.maximum((x * x).sum(-1), 1e-300), 0.0), a)
    c = np.where(neg, 0.0, c)
    sse = ((c[..., None] + a[..., None] * x - y) ** 2).sum(-1)
    return a, c, sse


def fit_many(hours: Sequence[float], errors: np.ndarray) -> np.ndarray:
    """Rows of (a, b, c) of the least-squares power law through each row of `errors` (R, N) at `hours` (N,);
    NaN where the fit does not converge (too few distinct hours, non-finite points, or the best exponent at the
    edge of B_RANGE). Closed form in (a, c) for each exponent, a grid then a golden-section search in b: all
    replicates at once, milliseconds instead of a second for 400 nonlinear fits."""
    h = np.asarray(hours, float)
    y = np.atleast_2d(np.asarray(errors, float))
    out = np.full((len(y), 3), np.nan)
    if len(np.unique(h)) < 3:
        return out
    grid = np.geomspace(*B_RANGE, 200)
    sse = np.stack([_linear_part(h ** -b, y)[2] for b in grid], axis=1)  # (R, grid)
    best = sse.argmin(1)
    lo = grid[np.maximum(best - 1, 0)]
    hi = grid[np.minimum(best + 1, len(grid) - 1)]
    phi = (math.sqrt(5) - 1) / 2
    for _ in range(40):  # golden section, vectorised over rows
        m1, m2 = hi - phi * (hi - lo), lo + phi * (hi - lo)
        f1 = _linear_part(h[None] ** -m1[:, None], y)[2]
        f2 = _linear_part(h[None] ** -m2[:, None], y)[2]
        hi, lo = np.where(f1 < f2, m2, hi), np.where(f1 < f2, lo, m1)
    b = (lo + hi) / 2
    a, c, _ = _linear_part(h[None] ** -b[:, None], y)
    ok = np.isfinite(y).all(1) & (best > 0) & (best < len(grid) - 1)
    out[ok] = np.stack([a, b, c], axis=1)[ok]
    return out


def fit(hours: Sequence[float], errors: Sequence[float]) -> tuple[float, float, float] | None:
    """(a, b, c) of one least-squares power law through the points (repeated hours are seeds), or None."""
    h = np.asarray(hours, float)
    p = fit_many(h, np.asarray(errors, float)[None])[0]
    return tuple(float(v) for v in p) if np.isfinite(p).all() else None  # type: ignore[return-value]


def hours_at(params: tuple[float, float, float], target: float, cap: float) -> float:
    """Labeled hours at which the curve comes down to `target`; inf when it never does or only past `cap`."""
    a, b, c = params
    if target <= c or a <= 0:
        return math.inf
    h = (a / (target - c)) ** (1.0 / b)
    return h if h <= cap else math.inf


def _kind(h: float, lo: float, hi: float) -> str:
    if not math.isfinite(h):
        return "beyond"
    return "interpolated" if lo <= h <= hi else "extrapolated"


def _summary(point: float, samples: Sequence[float], lo: float, hi: float, ci: float) -> dict:
    """A figure with its interval (inf where a replicate's curve never reaches the target within the cap)."""
    arr = np.asarray(samples, float)
    if len(arr):
        arr = np.where(np.isinf(arr), np.finfo(float).max, arr)
        interval = [float(x) if x < np.finfo(float).max / 2 else math.inf for x in M.interval(arr, ci)]
    else:
        interval = None
    return {"hours": point, "interval": interval, "kind": _kind(point, lo, hi)}


def fit_curves(table: Mapping[str, Mapping[str, dict]], per_run: Mapping[str, Mapping[str, Mapping[str, dict]]],
               reps: Mapping[tuple[str, str], dict[str, np.ndarray]], budgets_min: Sequence[float], metric: str,
               ci: float, smaller: str | None = None, larger: str | None = None) -> dict:
    """upstream -> its fit (or why there is none), and the hours `larger` needs to match `smaller` per budget."""
    budgets = sorted(budgets_min, key=float)
    hours = [float(b) / 60 for b in budgets]
    lo, hi = min(hours), max(hours)
    cap = EXTRAPOLATION * hi
    out: dict = {"metric": metric, "upstreams": {}, "match": None, "extrapolation_cap_hours": cap}
    if len(budgets) < 3:
        out["skipped"] = f"{len(budgets)} budget(s): a 3-parameter curve needs at least 3"
        return out
    fits: dict[str, tuple] = {}
    replicate_fits: dict[str, list] = {}
    for u in table:
        hs, es = [], []
        for b, h in zip(budgets, hours, strict=True):
            for r in per_run.get(u, {}).get(budget_name(b), {}).values():
                hs.append(h)
                es.append(r["weighted"][metric])
        p = fit(hs, es)
        if p is None:
            out["upstreams"][u] = {"converged": False, "why": "the least-squares fit did not converge"}
            continue
        fits[u] = p
        curves = np.stack([reps[(u, budget_name(b))][metric] for b in budgets], axis=1)
        replicate_fits[u] = [tuple(q) if np.isfinite(q).all() else None for q in fit_many(hours, curves)]
        good = [q for q in replicate_fits[u] if q is not None]
        entry: dict = {"converged": True, "a": p[0], "b": p[1], "c": p[2], "replicates": len(good),
                       "c_interval": list(M.interval(np.array([q[2] for q in good]), ci)) if good else None}
        for name, r in WITHIN.items():
            entry[f"within_{name}"] = _summary(hours_at(p, p[2] * (1 + r), cap),
                                               [hours_at(q, q[2] * (1 + r), cap) for q in good], lo, hi, ci)
        out["upstreams"][u] = entry
    if smaller in fits and larger in fits:
        match = {}
        for b, h in zip(budgets, hours, strict=True):
            point = hours_at(fits[larger], float(power_law(np.array(h), *fits[smaller])), cap)
            samples = [hours_at(q, float(power_law(np.array(h), *s)), cap)
                       for q, s in zip(replicate_fits[larger], replicate_fits[smaller], strict=True)
                       if q is not None and s is not None]
            match[budget_name(b)] = {**_summary(point, samples, lo, hi, ci), "smaller_hours": h,
                                     "ratio": h / point if math.isfinite(point) and point > 0 else None}
        out["match"] = {"smaller": smaller, "larger": larger, "by_budget": match}
    out["bands"] = {u: _band(fits[u], [q for q in replicate_fits[u] if q is not None], lo, hi, ci) for u in fits}
    return out


def _band(p: tuple, replicates: Sequence[tuple], lo: float, hi: float, ci: float) -> dict:
    """The fitted curve and its pointwise interval on a log grid over the measured budgets (for the figure)."""
    grid = np.geomspace(lo, hi, 50)
    curves = np.stack([power_law(grid, *q) for q in replicates]) if replicates else None
    band = np.nanpercentile(curves, [50 * (1 - ci), 50 * (1 + ci)], axis=0) if curves is not None else None
    return {"hours": grid.tolist(), "fit": power_law(grid, *p).tolist(),
            "low": band[0].tolist() if band is not None else None,
            "high": band[1].tolist() if band is not None else None}


def _hours(v: dict) -> str:
    """'0.42 h [0.30, 0.61]', marked when extrapolated; beyond the cap when a curve never gets there."""
    cap = f"> {EXTRAPOLATION:g}x the largest budget"

    def one(h: float) -> str:
        return f"{h:.3g}" if math.isfinite(h) else "beyond"

    text = f"{one(v['hours'])} h" if math.isfinite(v["hours"]) else cap
    if v["kind"] == "extrapolated":
        text += " (extrapolated)"
    if v.get("interval"):
        text += f" [{one(v['interval'][0])}, {one(v['interval'][1])}]"
    return text


def curves_markdown(curves: dict, ci: float) -> list[str]:
    """The fitted-curve section of results.md."""
    m = curves["metric"].upper()
    lines = ["", f"## Fitted curves: weighted {m} = c + a * hours^(-b)", ""]
    if curves.get("skipped"):
        return lines + [f"No fit: {curves['skipped']}; the tables above stand as they are."]
    lines += [f"Least squares on the per-seed points; [{ci:.0%} interval] over the same fit on every paired "
              f"bootstrap replicate. Hours outside the budgets are marked extrapolated; none is read past "
              f"{EXTRAPOLATION:g}x the largest budget ({curves['extrapolation_cap_hours']:.3g} h).", "",
              "| upstream | asymptote c | exponent b | hours to within 2.5% of c | hours to within 10% of c |",
              "|---|---|---|---|---|"]
    for u, f in curves["upstreams"].items():
        if not f["converged"]:
            lines.append(f"| {u} | {f['why']} | | | |")
            continue
        civ = f" [{f['c_interval'][0]:.3f}, {f['c_interval'][1]:.3f}]" if f["c_interval"] else ""
        lines.append(f"| {u} | {f['c']:.3f}{civ} | {f['b']:.2f} | {_hours(f['within_2.5%'])} "
                     f"| {_hours(f['within_10%'])} |")
    match = curves.get("match")
    if match:
        lines += ["", f"Labeled hours `{match['larger']}` needs to reach `{match['smaller']}`'s fitted {m} at each "
                  "budget (a ratio above 1: the larger model needs that many times fewer labels):", "",
                  f"| `{match['smaller']}` budget | hours `{match['larger']}` needs | ratio |", "|---|---|---|"]
        for b, v in match["by_budget"].items():
            ratio = f"{v['ratio']:.3g}x" if v["ratio"] else "n/a"
            lines.append(f"| {b} min ({v['smaller_hours']:.3g} h) | {_hours(v)} | {ratio} |")
    return lines


def _finite(v: float | None) -> float | None:
    return round(v, 5) if v is not None and math.isfinite(v) else None


def curves_summary(curves: dict) -> dict:
    """For metrics.json (plain JSON: a figure past the cap is null, its `kind` says `beyond`)."""
    def fig(v: dict) -> dict:
        return {"hours": _finite(v["hours"]), "kind": v["kind"],
                "interval": [_finite(x) for x in v["interval"]] if v.get("interval") else None}

    out: dict = {"metric": curves["metric"]}
    if curves.get("skipped"):
        return {**out, "skipped": curves["skipped"]}
    out["upstreams"] = {u: ({"asymptote": _finite(f["c"]), "asymptote_interval": f["c_interval"],
                             "a": _finite(f["a"]), "b": _finite(f["b"]),
                             **{f"hours_within_{k}": fig(f[f"within_{k}"]) for k in WITHIN}}
                            if f["converged"] else {"converged": False, "why": f["why"]})
                        for u, f in curves["upstreams"].items()}
    if curves.get("match"):
        out["match"] = {b: {**fig(v), "ratio": _finite(v["ratio"])} for b, v in curves["match"]["by_budget"].items()}
    return out
