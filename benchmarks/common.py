"""Shared pieces of the benchmarks: an idle-machine check, baseline/candidate interleaving, result files with
the commit they measured, GEMM peak, model FLOPs, synthetic batches, parameter lookup.

Every benchmark that states a ratio runs its baseline and candidate interleaved in one process (A B A B ...),
reports medians of at least five pairs, prints the load average it started under, and refuses to write a result
taken on a busy machine (`--allow-load` writes it, marked `under_load`). `python benchmarks/table.py` renders
the README's benchmark table from `benchmarks/results/*.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from labelbudget.schema import Params

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "tests"))

MAX_LOAD_PER_CORE = 0.5  # above this at the start, figures are refused (or marked, with --allow-load)


def load_per_core() -> float:
    return os.getloadavg()[0] / (os.cpu_count() or 1)


def bench_args(ap: argparse.ArgumentParser, pairs: int = 5) -> argparse.ArgumentParser:
    ap.add_argument("--pairs", type=int, default=pairs, help="baseline/candidate pairs, interleaved (>= 5 to "
                    "be written to benchmarks/results)")
    ap.add_argument("--allow-load", action="store_true", help="write figures taken on a busy machine, marked "
                    "`under_load` (default: refuse them)")
    ap.add_argument("--wait-idle", type=float, default=120.0, help="seconds to wait for the machine to go idle "
                    "before starting (default 120)")
    ap.add_argument("--no-save", action="store_true", help="print only; write nothing to benchmarks/results")
    return ap


class Bench:
    """One benchmark run: the load it started under, interleaved timings, and its result file."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        deadline = time.time() + args.wait_idle
        while load_per_core() > MAX_LOAD_PER_CORE and time.time() < deadline:
            time.sleep(5)
        self.load_start = load_per_core()
        self.under_load = self.load_start > MAX_LOAD_PER_CORE
        print(f"[{name}] load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
              f"({self.load_start:.2f} per core{'; BUSY: figures marked under_load' if self.under_load else ''})",
              flush=True)

    def interleave(self, runs: dict[str, Callable[[], float]], pairs: int | None = None,
                   label: str = "") -> dict[str, list[float]]:
        """Call each run once per round, in the given order (A B A B ...), `pairs` rounds; returns each run's
        figures. Interleaving spreads any drift of the machine (thermal, neighbours) over both sides."""
        pairs = pairs or self.args.pairs
        out: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(pairs):
            for k, fn in runs.items():
                out[k].append(fn())
            print(f"  {label}round {r + 1}/{pairs}: " + "  ".join(f"{k} {v[-1]:.4g}" for k, v in out.items()),
                  flush=True)
        return out

    def save(self, figures: dict, headline: str, runs: dict | None = None, extra: dict | None = None) -> Path | None:
        """Write benchmarks/results/<name>.json (refused under load unless --allow-load, or with < 5 pairs)."""
        load_end = load_per_core()
        print(f"[{self.name}] {headline}")
        if self.args.no_save:
            return None
        if self.under_load and not self.args.allow_load:
            sys.exit(f"[{self.name}] not written: the machine was busy at the start ({self.load_start:.2f} load "
                     f"per core > {MAX_LOAD_PER_CORE}); rerun idle, or pass --allow-load to write it marked")
        if self.args.pairs < 5:
            sys.exit(f"[{self.name}] not written: {self.args.pairs} pairs (>= 5 needed for a result file)")
        result = {"benchmark": self.name, "headline": headline, "figures": figures,
                  "command": "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
                  "commit": git_commit(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                  "machine": machine(), "pairs": self.args.pairs, "load_per_core_start": round(self.load_start, 3),
                  "load_per_core_end": round(load_end, 3), "under_load": self.under_load,
                  **(extra or {}), "runs": runs or {}}
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"[{self.name}] written to {path}; refresh the README table with "
              "`python benchmarks/table.py`")
        return path


def git_commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "labelbudget", "stages", "conf")
    return commit + ("+dirty" if dirty else "")


def machine() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "bf16_native": cpu_bf16_native(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available()
            else None}


def cpu_bf16_native() -> bool:
    from labelbudget.precision import cpu_has_native_bf16

    return cpu_has_native_bf16()


def load_profile(name: str, **sections: dict) -> Params:
    """The profile's params, typed, with `sections` deep-merged in (e.g. pretrain={"max_steps": 10})."""
    from labelbudget.profiles import compose_plain, deep_merge
    from labelbudget.schema import parse_params

    return parse_params(deep_merge(compose_plain(REPO, name), sections))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, reps: int = 10) -> float:
    """Best FLOP/s of a square matrix product on this machine, measured now."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def encoder_flops(cfg, batch: int, in_frames: int, num_targets: int = 0, training: bool = True) -> float:
    """Model FLOPs of one (padded) batch: matmuls and convolutions, x3 for forward plus backward."""
    t2, t4 = (in_frames + 1) // 2, (in_frames + 3) // 4
    d, f = cfg.dim, cfg.dim * cfg.ff_mult
    macs = t2 * cfg.n_mels * cfg.conv_channels * 3 + t4 * cfg.conv_channels * d * 3  # front end
    macs += t4 * d * cfg.pos_kernel
    per_layer = t4 * (4 * d * d + 2 * d * f) + 2 * t4 * t4 * d  # projections, FFN, scores and weighted sum
    macs += cfg.layers * per_layer + t4 * d * num_targets
    return 2.0 * macs * batch * (3 if training else 1)


def synthetic_batch(seconds: float, batch_seconds: float, device: torch.device, seed: int = 0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of `batch_seconds // seconds` speech-length noise waveforms (throughput does not depend on
    content)."""
    g = torch.Generator().manual_seed(seed)
    n = max(1, int(batch_seconds // seconds))
    samples = int(seconds * 16000)
    return torch.randn(n, samples, generator=g).to(device) * 0.1, torch.full((n,), samples, device=device)
