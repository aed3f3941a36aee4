"""A finished finetune applied to audio the experiment never saw: waveforms -> the run's upstream -> its
downstream model -> text, scored when references are given.

The upstream is rebuilt from params `upstreams.<name>` (the name the run's checkpoint records) and must be the
one the model was trained on: its fingerprint (checkpoint sha256) is compared with the one stored at training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from labelbudget.errors import LabelbudgetError

if TYPE_CHECKING:
    from labelbudget.schema import Params


class TranscriptionError(LabelbudgetError, ValueError):
    pass


def read_inputs(paths: Sequence[Path], manifest: Path | None, root: Path | None) -> list[dict]:
    """Rows {id, audio (a path), text (optional)} from audio files, or from a JSON Lines manifest whose
    `audio` is relative to `root` (default: the manifest's folder) unless absolute."""
    if manifest is not None:
        base = root or manifest.parent
        rows = []
        for k, r in enumerate(_manifest_rows(manifest)):
            if not isinstance(r, dict) or "audio" not in r:
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


def _manifest_rows(manifest: Path) -> list:
    if not manifest.is_file():
        raise TranscriptionError(f"{manifest}: manifest not found")
    rows = []
    for k, line in enumerate(manifest.read_text(encoding="utf-8", errors="replace").splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TranscriptionError(f"{manifest}: line {k + 1} is not JSON ({e.msg}); one JSON object per "
                                         'line, e.g. {"id": "a", "audio": "a.flac", "text": "..."}') from None
    return rows


def load_model(model_dir: Path) -> tuple:
    """The finetune's downstream model and meta; one line for a missing, damaged or foreign checkpoint."""
    from labelbudget.downstream import load_checkpoint

    path = model_dir / "model.pt"
    if not path.is_file():
        raise TranscriptionError(f"{path}: no downstream checkpoint (a models/finetune/<run> folder of a "
                                 "finished finetune)")
    try:
        return load_checkpoint(path)
    except (KeyError, TypeError) as e:
        raise TranscriptionError(f"{path}: not a finetune checkpoint of labelbudget (no {e})") from None
    except Exception as e:  # torch.load: truncated zip, pickle, unsupported types... one line, not its traceback
        raise TranscriptionError(f"{path}: damaged or not a labelbudget checkpoint: "
                                 f"{' '.join(str(e).split())[:200]}") from None


def load_waves(rows: list[dict]) -> list[torch.Tensor]:
    from labelbudget.audio import AudioDecodeError, load, resample

    wavs = []
    for r in rows:
        try:
            wav, sr = load(r["audio"], mono=True)
        except AudioDecodeError as e:
            raise TranscriptionError(str(e)) from None
        if len(wav) < sr * 0.05:
            raise TranscriptionError(f"{r['audio']}: {len(wav)} samples: too short to transcribe (under 50 ms)")
        wavs.append(torch.from_numpy(resample(wav, sr) if sr != 16000 else wav).float())
    return wavs


def transcribe_files(model_dir: Path, rows: list[dict], params: Params, batch_seconds: float = 60.0,
                     device: str = "auto") -> list[dict]:
    """Each row with its hypothesis `hyp` (normalised text, as the evaluation writes it)."""
    from labelbudget import upstreams
    from labelbudget.batching import bucket_batches, collate_waves
    from labelbudget.decoding import make_decoder
    from labelbudget.downstream import FeatureDataset, transcribe
    from labelbudget.extraction import autocast, featurize, resolve_device, weights_dtype

    wavs = load_waves(rows)  # every input decodes before anything heavy is loaded
    model, meta = load_model(model_dir)
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
    feats: dict[str, np.ndarray] = {}
    with autocast(dev, bf16):
        for batch in bucket_batches([len(w) / 16000 for w in wavs], batch_seconds):
            wav, lengths = collate_waves([wavs[k] for k in batch])
            for k, f in zip(batch, featurize(up, wav, lengths, meta["features_layers"], dev, bf16), strict=True):
                feats[rows[k]["id"]] = f
    ids = [r["id"] for r in rows]
    decoder = make_decoder(params.evaluate.decoder)
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
