"""Cost of the linear phone probe: the `probe` stage per upstream, and the pretraining monitor's share of a run.

Synthesizes the profile's corpus into --work (once), extracts and probes the chosen upstreams (checkpoint-free
kinds: fbank, random), then pretrains one size for --steps updates with the monitor every --every updates and
projects its share of a full run of the profile (max_steps updates, a probe every probe.pretrain.every).

    python benchmarks/probe_cost.py --profile default --work /tmp/probe-cost
    python benchmarks/probe_cost.py --profile gpu --work /tmp/probe-cost --device cuda
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import load_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (corpus, features, checkpoints)")
    ap.add_argument("--upstreams", nargs="*", default=["fbank", "random"])
    ap.add_argument("--size", default="large")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--device", default="auto", help="extraction device (pretraining picks its own)")
    args = ap.parse_args()

    from labelbudget.corpus import synthesize
    from labelbudget.extraction import extract_upstream
    from labelbudget.pretraining import pretrain
    from labelbudget.probe import PretrainingProbe, probe_upstream

    params = load_profile(args.profile, wandb={"mode": "disabled"}, extract={"device": args.device})
    corpus = args.work / "corpus"
    if not (corpus / "corpus.json").exists():
        synthesize(params.corpus.synth, params.seed, corpus)
    out: dict = {"profile": args.profile, "probe": {}}
    for up in args.upstreams:
        extract_upstream(up, params, corpus, args.work / "features" / up)
        r = probe_upstream(up, params, args.work / "features" / up, corpus, args.work / "probe" / up)
        out["probe"][up] = {"seconds": r["seconds"], "train_frames": r["train_frames"], "best": round(r["best"], 4),
                            "chance": round(r["chance"]["weighted"], 4),
                            "per_layer": {k: round(v["weighted"], 4) for k, v in r["accuracy"].items()}}
        print(up, json.dumps(out["probe"][up]), flush=True)

    full_steps, every = params.pretrain.max_steps, params.probe.pretrain.every
    params = load_profile(args.profile, wandb={"mode": "disabled"}, extract={"device": args.device},
                          pretrain={"max_steps": args.steps, "checkpoint_every": 10**9},
                          probe={"pretrain": {"every": args.every}})
    monitor = PretrainingProbe.from_params(params, corpus)
    calls: list[float] = []

    class Timed:  # the monitor, timed call by call (the first one also decodes its audio)
        every = args.every

        def __call__(self, encoder):
            t = time.time()
            values = monitor(encoder)
            calls.append(round(time.time() - t, 2))
            return values

    s = pretrain(args.size, params, args.work / "pretrain" / args.size, corpus, monitor=Timed())
    step = (s["wall_seconds"] - s["monitor_seconds"]) / s["steps"]
    later = sum(calls[1:]) / max(1, len(calls) - 1)
    probes = full_steps // every
    monitor_total = calls[0] + (probes - 1) * later
    out["monitor"] = {"size": args.size, "steps": s["steps"], "step_seconds": round(step, 3), "calls_seconds": calls,
                      "share_here": s["monitor_share"], "full_run_probes": probes,
                      "projected_share": round(monitor_total / (full_steps * step + monitor_total), 4)}
    print("monitor", json.dumps(out["monitor"]), flush=True)


if __name__ == "__main__":
    main()
