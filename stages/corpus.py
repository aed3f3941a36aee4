"""Stage `corpus`: synthesize the embedded corpus, or ingest a real one, into manifests under data/corpus."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from labelbudget.config import load_params
from labelbudget.io import atomic_dir
from labelbudget.manifest import Corpus, total_hours

OUT = Path("data/corpus")


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    params = load_params()
    source = params["corpus"]["source"]
    start = time.time()
    with atomic_dir(OUT) as tmp:
        if source == "synth":
            from labelbudget.corpus import SynthConfig, count_utterances, synthesize

            cfg = SynthConfig.from_params(params["corpus"]["synth"], seed=params["seed"])
            with tqdm(total=count_utterances(cfg), desc="synthesize", unit="utt") as bar:
                corpus = synthesize(cfg, tmp, progress=bar.update)
        else:
            from labelbudget.sources import ingest

            corpus = ingest(source, params["corpus"]["ingest"], tmp)
        lines = [f"{'part':<24}{'utts':>7}{'hours':>9}"]
        for part in corpus.parts:
            rows = corpus.read(part)
            lines.append(f"{part:<24}{len(rows):>7}{total_hours(rows):>9.3f}")
    print("\n".join(lines))
    print(f"corpus ({source}) written to {OUT} in {time.time() - start:.1f} s")
    Corpus.load(OUT)  # fail loudly here, not three stages later, if the description is unreadable


if __name__ == "__main__":
    main()
