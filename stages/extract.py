"""Stage `extract@<upstream>` / `extract-baseline@<upstream>`: cached float16 features of the labeled pool and
every test set, from a pretrained encoder size, the `random` control or `fbank` (log-mel)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from labelbudget.config import configure_threads, load_params
from labelbudget.extraction import NonFiniteFeaturesError, extract_part, load_upstream, resolve_device, resolve_layers
from labelbudget.io import write_json
from labelbudget.manifest import Corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("upstream", help="an SSL size from params `ssl_sizes`, or `fbank` / `random`")
    args = ap.parse_args()
    params = load_params()
    configure_threads()
    p = params["extract"]
    corpus = Corpus.load("data/corpus")
    up = load_upstream(args.upstream, params)
    layers = resolve_layers(p["layers"], up)
    device = resolve_device(p["device"])
    out = Path("data/features") / args.upstream
    parts = [corpus.labeled, *(corpus.test_part(t) for t in corpus.tests)]
    total = sum(r["duration"] for part in parts for r in corpus.read(part))
    start, summary = time.time(), []
    with tqdm(total=round(total), desc=f"extract {args.upstream} on {device}", unit="audio-s") as bar:
        for part in parts:
            try:
                summary.append(extract_part(up, corpus, part, out / part, layers, p["batch_seconds"],
                                            p["shard_utterances"], device, progress=bar.update))
            except NonFiniteFeaturesError as e:
                raise SystemExit(f"extract@{args.upstream} failed: {e}") from None
    wall = time.time() - start
    write_json(out / "upstream.json", {"upstream": up.name, "checkpoint_sha256": up.checkpoint, "layers": layers,
                                       "dim": up.dim, "frame_rate": up.frame_rate, "parts": summary,
                                       "audio_seconds": round(total, 1), "wall_seconds": round(wall, 1),
                                       "realtime_factor": round(total / max(wall, 1e-9), 1)})
    print(f"{args.upstream}: {total:.0f} s of audio in {wall:.1f} s ({total / max(wall, 1e-9):.0f}x real time)")


if __name__ == "__main__":
    main()
