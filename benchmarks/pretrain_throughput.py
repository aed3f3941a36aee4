"""Pretraining in fp32 and under bf16 autocast: step time interleaved, MFU against each dtype's GEMM peak
(measured in the same run), and the loss curves of both from the same initialisation on the same batches.

    python benchmarks/pretrain_throughput.py                                # CPU, default profile, large
    python benchmarks/pretrain_throughput.py --profile gpu --device cuda --curve-steps 0

Step time: a fixed batch of `--utterance-seconds` noise utterances filling `pretrain.batch_seconds`, `--steps`
optimizer steps per round, fp32 and bf16 rounds interleaved. Curves: `--curve-steps` steps of the pretraining
objective on the workspace corpus (`data/corpus`, its unlabeled pool), written with a figure to
`benchmarks/results/pretrain_bf16_curve.png`.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING

import torch
from common import (
    REPO,
    RESULTS,
    Bench,
    bench_args,
    encoder_flops,
    gemm_peak,
    load_profile,
    sync,
    synthetic_batch,
)

from labelbudget.encoder import EncoderConfig, count_parameters
from labelbudget.logmel import LogMel
from labelbudget.ssl import make_ssl_module

if TYPE_CHECKING:
    from labelbudget.schema import Params


def make_step(module, opt, sched, device: torch.device, bf16: bool, clip: float):
    def step(wav: torch.Tensor, lengths: torch.Tensor, k: int) -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = module.ssl_loss(wav, lengths, k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        opt.step()
        sched.step()
        return float(loss.detach())

    return step


def trainer_for(module, device: torch.device, bf16: bool, clip: float):
    cfg = module.configure_optimizers()
    return make_step(module, cfg["optimizer"], cfg["lr_scheduler"]["scheduler"], device, bf16, clip)


def curves(params: Params, size: str, steps: int, corpus_dir: Path, device: torch.device) -> dict[str, list[float]]:
    """Loss per step of fp32 and bf16 training from one initialisation, one batch order."""
    from labelbudget.batching import StepBatchSampler, WaveDataset, collate_waves
    from labelbudget.manifest import Corpus
    from labelbudget.ssl import make_targets

    p, seed = params.pretrain, params.seed
    cfg = EncoderConfig.from_params(params.models[size], params.features.n_mels)
    corpus = Corpus.load(corpus_dir)
    rows = corpus.read(corpus.unlabeled)
    durations = [r["duration"] for r in rows]
    quantizer = make_targets(p.objective, rows, corpus, p, cfg, seed)
    torch.manual_seed(seed)
    base = make_ssl_module(cfg, p, seed, quantizer).to(device)
    ds = WaveDataset([str(corpus.audio_path(r)) for r in rows], durations)
    batches = [collate_waves([ds[i] for i in b])
               for b in StepBatchSampler(durations, p.batch_seconds, steps, seed, start_step=lambda: 0)]
    out, seconds = {}, {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        module = copy.deepcopy(base)
        step = trainer_for(module, device, bf16, p.grad_clip)
        t = time.perf_counter()
        out[name] = [step(w.to(device), n.to(device), k) for k, (w, n) in enumerate(batches[:steps])]
        seconds[name] = time.perf_counter() - t
        print(f"  curve {name}: {steps} steps in {seconds[name]:.0f} s, loss {out[name][0]:.3f} -> "
              f"{sum(out[name][-20:]) / 20:.3f} (mean of the last 20)", flush=True)
    return out, seconds


def plot_curves(c: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, ys in c.items():
        k = 10
        smooth = [sum(ys[max(0, i - k + 1): i + 1]) / len(ys[max(0, i - k + 1): i + 1]) for i in range(len(ys))]
        ax.plot(range(1, len(ys) + 1), smooth, label=f"{name} (10-step mean)")
    ax.set_xlabel("update")
    ax.set_ylabel("pretraining loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--size", default="large")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps per round")
    ap.add_argument("--utterance-seconds", type=float, default=4.0)
    ap.add_argument("--curve-steps", type=int, default=300, help="0: no loss curves")
    ap.add_argument("--corpus", type=Path, default=REPO / "data" / "corpus")
    args = bench_args(ap).parse_args()
    bench = Bench("pretrain_throughput", args)
    params = load_profile(args.profile)
    device = torch.device(args.device)
    p = params.pretrain
    cfg = EncoderConfig.from_params(params.models[args.size], params.features.n_mels)
    torch.manual_seed(0)
    modules = {name: make_ssl_module(cfg, p, seed=0).to(device) for name in ("fp32", "bf16")}
    steps = {name: trainer_for(m, device, name == "bf16", p.grad_clip) for name, m in modules.items()}
    wav, lengths = synthetic_batch(args.utterance_seconds, p.batch_seconds, device)
    flops = encoder_flops(cfg, len(wav), int(LogMel.frames(wav.shape[1])), modules["fp32"].quantizer.num_targets)
    for name in steps:
        for k in range(2):
            steps[name](wav, lengths, k)

    def timed(name: str):
        def run() -> float:
            sync(device)
            t = time.perf_counter()
            for k in range(args.steps):
                steps[name](wav, lengths, k)
            sync(device)
            return (time.perf_counter() - t) / args.steps
        return run

    secs = bench.interleave({"fp32": timed("fp32"), "bf16": timed("bf16")})
    peaks = {"fp32": gemm_peak(device, torch.float32), "bf16": gemm_peak(device, torch.bfloat16)}
    audio = float(lengths.sum()) / 16000
    figures: dict = {"batch": f"{len(wav)} x {args.utterance_seconds:g} s", "model_gflop_per_step": flops / 1e9,
                     "parameters_m": count_parameters(modules["fp32"].encoder) / 1e6}
    print(f"device {device}, {torch.get_num_threads()} threads; {args.size}: {figures['parameters_m']:.1f}M "
          f"encoder parameters; batch {figures['batch']}; {flops / 1e9:.2f} GFLOP per step")
    for name in ("fp32", "bf16"):
        dt = median(secs[name])
        mfu = flops / dt / peaks[name]
        figures[name] = {"ms_per_step": round(dt * 1000, 1), "steps_per_s": round(1 / dt, 3),
                         "audio_s_per_s": round(audio / dt, 1), "tflops": round(flops / dt / 1e12, 4),
                         "gemm_peak_tflops": round(peaks[name] / 1e12, 3), "mfu": round(mfu, 4)}
        print(f"  {name}: {dt * 1000:7.1f} ms/step ({1 / dt:.2f} steps/s), {flops / dt / 1e12:.3f} TFLOP/s, "
              f"MFU {mfu:.1%} of the {name} GEMM peak ({peaks[name] / 1e12:.2f} TFLOP/s, measured now)")
    speedup = median([a / b for a, b in zip(secs["fp32"], secs["bf16"], strict=True)])
    figures["bf16_speedup"] = round(speedup, 3)
    print(f"  bf16 speedup {speedup:.2f}x (median of per-round ratios)")
    headline = (f"pretraining {args.size}: fp32 {figures['fp32']['steps_per_s']:.2f} steps/s (MFU "
                f"{figures['fp32']['mfu']:.0%} of fp32 peak), bf16 {figures['bf16']['steps_per_s']:.2f} steps/s "
                f"(MFU {figures['bf16']['mfu']:.0%} of bf16 peak): **{speedup:.2f}x**")
    if args.curve_steps and (args.corpus / "manifests").exists():
        c, secs_real = curves(params, args.size, args.curve_steps, args.corpus, device)
        tail = max(1, args.curve_steps // 5)
        last = {k: sum(v[-tail:]) / tail for k, v in c.items()}
        gap = (last["bf16"] - last["fp32"]) / last["fp32"]
        real = secs_real["fp32"] / secs_real["bf16"]
        figures["curves"] = {"steps": args.curve_steps, "last_mean_loss": last, "relative_gap": round(gap, 4),
                             "seconds": {k: round(v, 1) for k, v in secs_real.items()},
                             "bf16_speedup_real_batches": round(real, 3),
                             "fp32": [round(x, 4) for x in c["fp32"]], "bf16": [round(x, 4) for x in c["bf16"]]}
        print(f"  loss over the last {tail} of {args.curve_steps} steps: fp32 {last['fp32']:.4f}, bf16 "
              f"{last['bf16']:.4f} ({gap:+.1%})")
        print(f"  on real batches (a new shape each, one run each, not interleaved): bf16 {real:.2f}x fp32")
        headline += (f"; corpus batches: loss after {args.curve_steps} steps bf16 vs fp32 {gap:+.1%}, speed "
                     f"{real:.2f}x (bf16 not used on CPU)")
        if not args.no_save:
            plot_curves(c, RESULTS / "pretrain_bf16_curve.png",
                        f"{args.size}, {p['objective']}: fp32 vs bf16 autocast, same init and batches")
    elif args.curve_steps:
        print(f"  no loss curves: {args.corpus} has no corpus (run `dvc repro validate` first)")
    bench.save(figures, headline, runs={k: [round(x * 1000, 2) for x in v] for k, v in secs.items()},
               extra={"device": str(device), "size": args.size, "profile": args.profile})


if __name__ == "__main__":
    main()
