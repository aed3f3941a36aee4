"""Extraction throughput: the stage's path against a naive extraction, interleaved, all layers kept.

Naive: one utterance at a time, the full forward through every layer and the SSL head, fp32, every hidden state
copied out. Stage: `labelbudget.extraction.featurize` as the extract stage calls it (length-bucketed batches,
only the layers up to the highest kept, float16 output), in fp32 and under the precision `auto` picks here
(bf16 autocast on a CPU with AMX/AVX512-BF16 or a GPU). Also: the padding share of the stage's batches, the
agreement of bf16 features with fp32 ones per layer, and (`--rss`) peak memory at 1x and 2x corpus size.

    python benchmarks/extraction_throughput.py                 # CPU, default profile's large model, 5 rounds
    python benchmarks/extraction_throughput.py --device cuda --utterances 2000
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from statistics import median

import torch
from common import REPO, Bench, bench_args, load_profile, sync

from labelbudget.batching import bucket_batches, collate_waves
from labelbudget.encoder import Encoder, EncoderConfig
from labelbudget.extraction import autocast, featurize, resolve_layers, weights_dtype
from labelbudget.logmel import normalize
from labelbudget.precision import use_bf16
from labelbudget.upstreams.ssl import EncoderUpstream

# bf16 keeps 8 mantissa bits: per-layer relative RMS error of the features against fp32 (stated tolerance)
AGREEMENT_TOLERANCE = 0.03


def utterances(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(16000 * (2 + 4 * torch.rand(1, generator=g).item())), generator=g)
            for _ in range(n)]


def stage_path(up: EncoderUpstream, wavs, layers, batch_seconds, device, bf16: bool) -> float:
    durations = [len(w) / 16000 for w in wavs]
    sync(device)
    t = time.perf_counter()
    with autocast(device, bf16):  # as extract_part: one bf16 copy of the weights per loop
        for batch in bucket_batches(durations, batch_seconds):
            wav, lengths = collate_waves([wavs[i] for i in batch])
            featurize(up, wav, lengths, layers, device, bf16)
    sync(device)
    return time.perf_counter() - t


@torch.inference_mode()
def naive_path(up: EncoderUpstream, wavs, head: torch.nn.Linear, device) -> float:
    logmel = up.logmel
    sync(device)
    t = time.perf_counter()
    for w in wavs:
        wav, lengths = w[None].to(device), torch.tensor([len(w)], device=device)
        feats, flens = logmel(wav, lengths)
        hidden, _ = up.encoder(normalize(feats, flens), flens)
        head(up.encoder.final_norm(hidden[-1]))
        [h.float().cpu() for h in hidden]
    sync(device)
    return time.perf_counter() - t


def padding_share(wavs, batch_seconds: float) -> float:
    durations = [len(w) / 16000 for w in wavs]
    padded = sum(len(b) * max(durations[i] for i in b) for b in bucket_batches(durations, batch_seconds))
    return 1 - sum(durations) / padded


def agreement(up: EncoderUpstream, up_bf16: EncoderUpstream, wavs, layers, batch_seconds, device) -> list[float]:
    """Per kept layer: relative RMS error of bf16-autocast features against fp32 ones."""
    durations = [len(w) / 16000 for w in wavs]
    num = torch.zeros(len(layers), dtype=torch.float64)
    den = torch.zeros(len(layers), dtype=torch.float64)
    for batch in bucket_batches(durations, batch_seconds):
        wav, lengths = collate_waves([wavs[i] for i in batch])
        for a, b in zip(featurize(up, wav, lengths, layers, device, False),
                        featurize(up_bf16, wav, lengths, layers, device, True), strict=True):
            a64, b64 = torch.from_numpy(a).double(), torch.from_numpy(b).double()
            num += (a64 - b64).square().sum((0, 2))
            den += a64.square().sum((0, 2))
    return (num / den).sqrt().tolist()


RSS_CHILD = """
import resource, sys, torch
sys.path.insert(0, {tests!r})
from corpora import build_corpus
from labelbudget.encoder import Encoder, EncoderConfig
from labelbudget.extraction import extract_part
from labelbudget.upstreams.ssl import EncoderUpstream
from pathlib import Path
root = Path({root!r})
corpus = build_corpus(root, n_unlabeled=1, n_labeled={n}, tests=("a",), n_test=1, seconds=(1.0, 3.0))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
torch.manual_seed(0)
up = EncoderUpstream("random", Encoder(EncoderConfig(**{cfg!r})), "random")
layers = list(range(up.num_layers + 1))
extract_part(up, corpus, "labeled", root / "feats", layers, 60, 64, torch.device("cpu"))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, base / 1024)
"""


def peak_rss(n: int, cfg: dict) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        code = RSS_CHILD.format(tests=str(REPO / "tests"), root=d, n=n, cfg=cfg)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        peak, before = map(float, out.split()[-2:])
        return peak, before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="default")
    ap.add_argument("--size", default="large")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--utterances", type=int, default=120)
    ap.add_argument("--rss", action="store_true", help="also peak RSS of extraction at 1x and 2x corpus size")
    ap.add_argument("--rss-utterances", type=int, default=300)
    args = bench_args(ap).parse_args()
    bench = Bench("extraction_throughput", args)
    params = load_profile(args.profile)
    device = torch.device(args.device)
    auto_bf16 = use_bf16(params.extract.precision, device)
    cfg = EncoderConfig.from_params(params.models[args.size], params.features.n_mels)
    torch.manual_seed(0)
    up = EncoderUpstream(args.size, Encoder(cfg), "benchmark").to(device)
    head = torch.nn.Linear(cfg.dim, params.pretrain.codebook_size).to(device)
    wavs = utterances(args.utterances)
    audio = sum(len(w) for w in wavs) / 16000
    layers = resolve_layers(params.extract.layers, up)
    bs = params.extract.batch_seconds
    print(f"device {device}, {torch.get_num_threads()} threads; {args.size} encoder ({cfg.layers} layers x "
          f"{cfg.dim}), layers kept {layers}; {len(wavs)} utterances, {audio:.0f} s of audio; precision auto -> "
          f"{'bf16' if auto_bf16 else 'fp32'}")
    up_bf16 = copy.deepcopy(up).to(device, weights_dtype(device, True))  # as extract_part prepares it
    naive_path(up, wavs[:2], head, device)  # warm-up
    stage_path(up, wavs[:8], layers, bs, device, False)
    stage_path(up_bf16, wavs[:8], layers, bs, device, True)
    # Each round draws new utterances (the same for every path in it): fresh shapes, as in a real extraction,
    # so kernels compiled for the previous round's shapes cannot flatter either path.
    rounds = [utterances(args.utterances, seed=1 + r) for r in range(args.pairs)]
    waves = {k: iter(rounds) for k in ("naive", "stage_fp32", "stage_bf16")}  # each path walks the same rounds
    runs = {"naive": lambda: naive_path(up, next(waves["naive"]), head, device),
            "stage_fp32": lambda: stage_path(up, next(waves["stage_fp32"]), layers, bs, device, False)}
    if auto_bf16:
        runs["stage_bf16"] = lambda: stage_path(up_bf16, next(waves["stage_bf16"]), layers, bs, device, True)
    secs = bench.interleave(runs)

    stage = "stage_bf16" if auto_bf16 else "stage_fp32"
    ratios = {k: median([n / s for n, s in zip(secs["naive"], secs[k], strict=True)]) for k in runs if k != "naive"}
    per_round = [sum(len(w) for w in ws) / 16000 for ws in rounds]
    rates = {k: median([a / t for a, t in zip(per_round, v, strict=True)]) for k, v in secs.items()}
    for k in runs:
        extra = f"  -> {ratios[k]:.2f}x naive (median of per-round ratios)" if k in ratios else ""
        print(f"  {k:11} {rates[k]:9.1f} audio-s/s{extra}")
    pad = padding_share(wavs, bs)
    rel = agreement(up, up_bf16, wavs[:40], layers, bs, device)
    print(f"  padding share of the stage's batches: {pad:.1%}")
    print(f"  bf16 vs fp32 features, relative RMS error per layer: {', '.join(f'{x:.4f}' for x in rel)} "
          f"(tolerance {AGREEMENT_TOLERANCE}: {'ok' if max(rel) <= AGREEMENT_TOLERANCE else 'EXCEEDED'})")
    figures = {"audio_s_per_s": {k: round(v, 1) for k, v in rates.items()},
               "ratio_vs_naive": {k: round(v, 3) for k, v in ratios.items()}, "padding_share": round(pad, 4),
               "bf16_rel_rms_error_per_layer": [round(x, 5) for x in rel],
               "agreement_tolerance": AGREEMENT_TOLERANCE, "layers_kept": layers, "stage_precision": stage}
    if args.rss:
        small_cfg = dict(cfg.to_dict())
        p1, _ = peak_rss(args.rss_utterances, small_cfg)
        p2, _ = peak_rss(2 * args.rss_utterances, small_cfg)
        print(f"  peak RSS, extraction of {args.rss_utterances} utts: {p1:.0f} MiB; of "
              f"{2 * args.rss_utterances}: {p2:.0f} MiB (ratio {p2 / p1:.2f}; 1.0 = flat)")
        figures |= {"rss_1x_mib": round(p1), "rss_2x_mib": round(p2)}
    headline = (f"extraction, {args.size}, all {len(layers)} layers kept: stage ({stage.removeprefix('stage_')}) "
                f"**{ratios[stage]:.2f}x** naive ({rates[stage]:.0f} vs {rates['naive']:.0f} audio-s/s); fp32 stage "
                f"{ratios['stage_fp32']:.2f}x; bf16 feature error <= {max(rel):.3f} rel. RMS")
    bench.save(figures, headline, runs={k: [round(x, 4) for x in v] for k, v in secs.items()},
               extra={"device": str(device), "utterances": len(wavs), "audio_seconds": round(audio, 1)})


if __name__ == "__main__":
    main()
