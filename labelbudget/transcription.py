"""A finished finetune applied to audio the experiment never saw: waveforms -> the run's upstream -> its
downstream model -> text, scored when references are given.

The upstream is rebuilt from params `upstreams.<name>` (the name the run's checkpoint records) and must be the
one the model was trained on: its fingerprint (checkpoint sha256) is compared with the one stored at training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from labelbudget.errors import LabelbudgetError
from labelbudget.io import read_jsonl


class TranscriptionError(LabelbudgetError, ValueError):
    pass


def read_inputs(paths: Sequence[Path], manifest: Path | None, root: Path | None) -> list[dict]:
    """Rows {id, audio (a path), text (optional)} from audio files, or from a JSON Lines manifest whose
    `audio` is relative to `root` (default: the manifest's folder) unless absolute."""
    if manifest is not None:
        base = root or manifest.parent
        rows = []
        for k, r in enumerate(read_jsonl(manifest)):
            if "audio" not in r:
                raise TranscriptionError(f"{manifest}: line {k + 1} has no `audio` field")
            rows.append({"id": str(r.get("id", k)), "audio": base / r["audio"], "text": r.get("text")})
    else:
        rows = [{"id": p.stem if len({q.stem for q in paths}) == len(paths) else str(p), "audio": p, "text": None}
                for p in paths]
    missing = [str(r["audio"]) for r in rows if not Path(r["audio"]).is_file()]
    if missing:
        raise TranscriptionError(f"{len(missing)} audio file(s) not found, e.g. {missing[0]}")
    if not rows:
        raise TranscriptionError("nothing to transcribe: give audio files or --manifest")
    return rows


def transcribe_files(model_dir: Path, rows: list[dict], params: dict, batch_seconds: float = 60.0,
                     device: str = "auto") -> list[dict]:
    """Each row with its hypothesis `hyp` (normalised text, as the evaluation writes it)."""
    from labelbudget import upstreams
    from labelbudget.audio import load, resample
    from labelbudget.batching import bucket_batches, collate_waves
    from labelbudget.decoding import make_decoder
    from labelbudget.downstream import FeatureDataset, load_checkpoint, transcribe
    from labelbudget.extraction import autocast, featurize, resolve_device, weights_dtype

    model, meta = load_checkpoint(model_dir / "model.pt")
    name = meta["upstream"]
    up = upstreams.load(name, params)
    trained_on = (meta.get("features_meta") or {}).get("checkpoint_sha256")
    if trained_on and trained_on != up.fingerprint:
        raise TranscriptionError(f"upstream {name!r} is not the one {model_dir} was trained on "
                                 f"({up.fingerprint[:12]} now, {trained_on[:12]} at training); re-run the "
                                 f"pipeline or point params upstreams.{name} at the original")
    dev = resolve_device(device)
    # the features the model was trained on: computed under the same autocast (the compute is in their meta)
    bf16 = (meta.get("features_meta") or {}).get("compute") == "bf16"
    up.to(dev, weights_dtype(dev, bf16))
    model.to(dev)
    wavs = []
    for r in rows:
        wav, sr = load(r["audio"], mono=True)
        wavs.append(torch.from_numpy(resample(wav, sr) if sr != 16000 else wav).float())
    feats: dict[str, np.ndarray] = {}
    with autocast(dev, bf16):
        for batch in bucket_batches([len(w) / 16000 for w in wavs], batch_seconds):
            wav, lengths = collate_waves([wavs[k] for k in batch])
            for k, f in zip(batch, featurize(up, wav, lengths, meta["features_layers"], dev, bf16), strict=True):
                feats[rows[k]["id"]] = f
    ids = [r["id"] for r in rows]
    decoder = make_decoder(params.get("evaluate", {}).get("decoder", "greedy"))
    hyps = transcribe(model, FeatureDataset(feats, ids, layer=meta["layer_index"]), decoder)
    return [{**r, "audio": str(r["audio"]), "hyp": hyps[r["id"]]} for r in rows]


def score(rows: list[dict]) -> dict | None:
    """Corpus WER/CER of the rows that have a reference text, or None when none has."""
    from labelbudget.metrics import corpus_scores

    scored = [r for r in rows if r.get("text")]
    if not scored:
        return None
    return corpus_scores([r["text"] for r in scored], [r["hyp"] for r in scored], "transcribed")


def write(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
