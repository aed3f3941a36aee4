"""Feature extraction: an upstream (pretrained encoder, random encoder or log-mel) -> cached float16 features.

Runs only the encoder layers up to the highest one kept (never the SSL prediction head), batches utterances by
length, uses the GPU with bf16 autocast when present, and streams one shard at a time to disk so that peak
memory does not grow with the corpus.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labelbudget.batching import WaveDataset, bucket_batches, collate_waves
from labelbudget.encoder import Encoder, EncoderConfig
from labelbudget.featstore import ShardWriter, sha256_file
from labelbudget.io import read_json, write_json
from labelbudget.logmel import HOP, SAMPLE_RATE, LogMel, normalize
from labelbudget.manifest import Corpus
from labelbudget.pretraining import FORMAT

BASELINES = ("fbank", "random")


class CheckpointError(RuntimeError):
    pass


class NonFiniteFeaturesError(FloatingPointError):
    pass


@dataclass
class Upstream:
    name: str
    encoder: Encoder | None  # None: log-mel features
    checkpoint: str  # sha256 of the checkpoint file, or a description of a checkpoint-free upstream
    n_mels: int

    @property
    def num_layers(self) -> int:
        return 0 if self.encoder is None else self.encoder.cfg.layers

    @property
    def dim(self) -> int:
        return self.n_mels if self.encoder is None else self.encoder.cfg.dim

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / HOP / (1 if self.encoder is None else 4)


def load_checkpoint(path: Path, expected: EncoderConfig) -> Encoder:
    """Load an exported encoder safely (`weights_only`), with errors that name the file and the mismatch."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint missing; run `dvc repro pretrain@<size>` first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files fail in several ways
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or not a torch file): {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a labelbudget SSL export (format {FORMAT!r} expected)")
    got = blob["encoder_config"]
    diff = {k: (got.get(k), v) for k, v in expected.to_dict().items() if got.get(k) != v and k != "dropout"}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a} vs params {b}" for k, (a, b) in diff.items())
        raise CheckpointError(f"{path}: checkpoint does not match params `models`: {detail}")
    encoder = Encoder(EncoderConfig(**got))
    try:
        encoder.load_state_dict(blob["encoder"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the encoder: {e}") from None
    return encoder.eval()


def load_upstream(name: str, params: dict, models_dir: Path = Path("models/pretrain")) -> Upstream:
    n_mels = params["features"]["n_mels"]
    if name == "fbank":
        return Upstream(name, None, f"log-mel n_mels={n_mels}", n_mels)
    if name == "random":
        size = params["models"]["random"]
        cfg = EncoderConfig.from_params(params["models"][size], n_mels)
        torch.manual_seed(int(params["seed"]))
        return Upstream(name, Encoder(cfg).eval(), f"random-init {size} seed={params['seed']}", n_mels)
    if name not in params["models"]:
        raise ValueError(f"unknown upstream {name!r}: not in params `models` nor one of {BASELINES}")
    path = models_dir / name / "model.pt"
    cfg = EncoderConfig.from_params(params["models"][name], n_mels)
    return Upstream(name, load_checkpoint(path, cfg), sha256_file(path) if path.exists() else "", n_mels)


def resolve_layers(setting: str | list[int], up: Upstream) -> list[int]:
    """Hidden-state indices to keep: 0 is the front-end output, i the output of Transformer layer i."""
    if up.encoder is None:
        return [0]
    layers = list(range(up.num_layers + 1)) if setting == "all" else sorted(int(x) for x in setting)
    bad = [x for x in layers if not 0 <= x <= up.num_layers]
    if bad:
        raise ValueError(f"params extract.layers: {bad} outside 0..{up.num_layers} for upstream {up.name!r}")
    return layers


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@torch.inference_mode()
def featurize(up: Upstream, logmel: LogMel, wav: torch.Tensor, lengths: torch.Tensor, layers: list[int],
              device: torch.device) -> list[np.ndarray]:
    """One padded batch -> per-utterance (frames, layers, dim) float16 arrays."""
    wav, lengths = wav.to(device), lengths.to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        feats, flens = logmel(wav, lengths)
        feats = normalize(feats, flens)
        if up.encoder is None:
            stacked, out_len = feats[:, :, None, :], flens
        else:
            hidden, out_len = up.encoder(feats, flens, max_layer=max(layers))
            stacked = torch.stack([hidden[i] for i in layers], dim=2)
    stacked = stacked.to(torch.float16).cpu().numpy()
    out = [stacked[b, : int(n)] for b, n in enumerate(out_len.cpu())]
    bad = [b for b, f in enumerate(out) if not np.isfinite(f).all()]
    if bad:  # a diverged checkpoint, or values beyond float16's range: never cached, never trained on
        raise NonFiniteFeaturesError(f"upstream {up.name!r} ({up.checkpoint[:16]}): non-finite features "
                                     f"(NaN/inf, or beyond float16) for {len(bad)} of {len(out)} utterances "
                                     f"of a batch")
    return out


def extract_part(up: Upstream, corpus: Corpus, part: str, out: Path, layers: list[int], batch_seconds: float,
                 shard_utterances: int, device: torch.device, progress: Callable[[float], None] | None = None
                 ) -> dict:
    """Extract one part into `out`, resuming complete shards of the same upstream checkpoint and layers."""
    rows = corpus.read(part)
    durations = [r["duration"] for r in rows]
    order = np.argsort(durations, kind="stable")
    shards = [[rows[i]["id"] for i in order[s : s + shard_utterances]] for s in range(0, len(rows), shard_utterances)]
    plan_hash = hashlib.sha256("\n".join(",".join(s) for s in shards).encode()).hexdigest()
    meta = {"upstream": up.name, "checkpoint_sha256": up.checkpoint, "layers": layers, "dim": up.dim,
            "frame_rate": up.frame_rate, "dtype": "float16", "num_shards": len(shards), "plan": plan_hash,
            "part": part}
    meta_path = out / "meta.json"
    if out.exists() and (not meta_path.exists() or read_json(meta_path) != meta):
        shutil.rmtree(out)  # features of another checkpoint, layer choice or manifest: never mixed
    out.mkdir(parents=True, exist_ok=True)
    write_json(meta_path, meta)
    by_id = {r["id"]: r for r in rows}
    logmel = LogMel(up.n_mels).to(device)
    if up.encoder is not None:
        up.encoder.to(device)
    done = 0
    for k, ids in enumerate(shards):
        writer = ShardWriter(out, k)
        secs = sum(by_id[i]["duration"] for i in ids)
        if writer.is_done(ids):
            done += 1
            if progress:
                progress(secs)
            continue
        ds = WaveDataset([str(corpus.audio_path(by_id[i])) for i in ids], [by_id[i]["duration"] for i in ids])
        feats: dict[int, np.ndarray] = {}
        for batch in bucket_batches(ds.durations, batch_seconds):
            wav, lengths = collate_waves([ds[j] for j in batch])
            try:
                batch_feats = featurize(up, logmel, wav, lengths, layers, device)
            except NonFiniteFeaturesError as e:
                raise NonFiniteFeaturesError(f"{e} in part {part!r} (e.g. {ds.paths[batch[0]]}); "
                                             "nothing written for this shard") from None
            for j, f in zip(batch, batch_feats, strict=True):
                feats[j] = f
        writer.write(ids, [feats[j] for j in range(len(ids))])
        if progress:
            progress(secs)
    return {"part": part, "utterances": len(rows), "shards": len(shards), "reused_shards": done}
