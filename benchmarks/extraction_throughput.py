"""Extraction throughput of the stage's path vs a naive extraction, and peak memory at 1x and 2x corpus size.

Stage path: utterances batched by length, only the layers up to the highest kept, bf16 autocast on a GPU,
float16 output. Naive: one utterance at a time, the full forward through every layer and the SSL head, fp32.

    python benchmarks/extraction_throughput.py                       # CPU, default profile's large model
    python benchmarks/extraction_throughput.py --device cuda --utterances 2000 --no-rss
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch
from common import REPO, load_profile, sync

from labelbudget.batching import bucket_batches, collate_waves
from labelbudget.encoder import Encoder, EncoderConfig
from labelbudget.extraction import featurize, resolve_layers
from labelbudget.logmel import normalize
from labelbudget.upstreams.ssl import EncoderUpstream


def utterances(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(16000 * (2 + 4 * torch.rand(1, generator=g).item())), generator=g)
            for _ in range(n)]


def stage_path(up: EncoderUpstream, wavs, layers, batch_seconds, device) -> float:
    durations = [len(w) / 16000 for w in wavs]
    sync(device)
    t = time.perf_counter()
    for batch in bucket_batches(durations, batch_seconds):
        wav, lengths = collate_waves([wavs[i] for i in batch])
        featurize(up, wav, lengths, layers, device)
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
    ap.add_argument("--utterances", type=int, default=40)
    ap.add_argument("--rss-utterances", type=int, default=300)
    ap.add_argument("--no-rss", action="store_true")
    args = ap.parse_args()
    params = load_profile(args.profile)
    device = torch.device(args.device)
    cfg = EncoderConfig.from_params(params["models"][args.size], params["features"]["n_mels"])
    torch.manual_seed(0)
    up = EncoderUpstream(args.size, Encoder(cfg), "benchmark").to(device)
    head = torch.nn.Linear(cfg.dim, params["pretrain"]["codebook_size"]).to(device)
    wavs = utterances(args.utterances)
    audio = sum(len(w) for w in wavs) / 16000
    naive_path(up, wavs[:2], head, device)  # warm-up
    stage_path(up, wavs[:4], [0], params["extract"]["batch_seconds"], device)
    t_naive = naive_path(up, wavs, head, device)
    print(f"device {device}; {args.size} encoder ({cfg.layers} layers x {cfg.dim}); {len(wavs)} utterances, "
          f"{audio:.0f} s of audio")
    print(f"  naive (1 utt, all layers + head, fp32) {audio / t_naive:10.1f} audio-s/s")
    for label, setting in (("all layers", params["extract"]["layers"]), ("layers <= L/2", [cfg.layers // 2])):
        layers = resolve_layers(setting, up)
        t = stage_path(up, wavs, layers, params["extract"]["batch_seconds"], device)
        print(f"  stage ({label:13}, batched{', bf16' if device.type == 'cuda' else ''}) "
              f"{audio / t:10.1f} audio-s/s  -> {t_naive / t:.2f}x naive")
    if not args.no_rss:
        small_cfg = {k: v for k, v in cfg.to_dict().items()}
        p1, b1 = peak_rss(args.rss_utterances, small_cfg)
        p2, b2 = peak_rss(2 * args.rss_utterances, small_cfg)
        print(f"  peak RSS, extraction of {args.rss_utterances} utts: {p1:.0f} MiB; of "
              f"{2 * args.rss_utterances}: {p2:.0f} MiB (ratio {p2 / p1:.2f}; 1.0 = flat)")
        print(json.dumps({"rss_1x_mib": p1, "rss_2x_mib": p2}))


if __name__ == "__main__":
    main()
