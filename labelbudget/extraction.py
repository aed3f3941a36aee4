"""Feature extraction: any upstream (labelbudget.upstreams) -> cached float16 features.

Asks the upstream only for the layers up to the highest one kept (never an SSL prediction head), batches
utterances by length, runs under bf16 autocast where the hardware has native bf16 (a GPU, or a CPU with AMX /
AVX512-BF16: `labelbudget.precision`), and streams one shard at a time to disk so
that peak memory does not grow with the corpus.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from labelbudget.batching import WaveDataset, bucket_batches, collate_waves
from labelbudget.errors import LabelbudgetError
from labelbudget.featstore import ShardWriter
from labelbudget.io import read_json, write_json
from labelbudget.manifest import Corpus
from labelbudget.upstreams import Upstream

if TYPE_CHECKING:
    from labelbudget.schema import Params

SHAPE_QUANTUM = 8000  # samples (0.5 s)


class NonFiniteFeaturesError(LabelbudgetError, FloatingPointError):
    pass


def resolve_layers(setting: str | list[int], up: Upstream) -> list[int]:
    """Hidden-state indices to keep: 0 is the front-end output, i the output of layer i."""
    if up.num_layers == 0:
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


def weights_dtype(device: torch.device, bf16: bool) -> torch.dtype | None:
    """Upstream weights for inference: bf16 on a CPU when bf16 is on (faster than autocast alone there)."""
    return torch.bfloat16 if bf16 and device.type == "cpu" else None


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """Wrap a loop of `featurize` calls in this: autocast keeps its bf16 copies of the weights until the outermost
    context exits, so they are made once per loop instead of once per batch (~7% of CPU extraction)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.inference_mode()
def featurize(up: Upstream, wav: torch.Tensor, lengths: torch.Tensor, layers: list[int], device: torch.device,
              bf16: bool = False) -> list[np.ndarray]:
    """One padded batch -> per-utterance (frames, layers, dim) float16 arrays."""
    # Batch lengths rounded up to a multiple of SHAPE_QUANTUM: oneDNN builds kernels per shape, and a corpus of
    # distinct lengths would build new ones for every batch (~15% of bf16 CPU extraction)
    wav = torch.nn.functional.pad(wav, (0, -wav.shape[1] % SHAPE_QUANTUM))
    wav, lengths = wav.to(device), lengths.to(device)
    with autocast(device, bf16):
        hidden, out_len = up.hidden_states(wav, lengths, max_layer=max(layers))
    # Each kept layer copied straight into its float16 slot: one pass, where stacking then converting takes two
    # (~9% of bf16 CPU extraction)
    b, t, d = hidden[layers[0]].shape
    stacked = torch.empty(b, t, len(layers), d, dtype=torch.float16, device=device)
    for j, i in enumerate(layers):
        stacked[:, :, j].copy_(hidden[i])
    valid = torch.arange(stacked.shape[1], device=device)[None, :] < out_len[:, None]
    # NaN or inf anywhere in a frame makes its fp32 sum non-finite (a sum of fp16 values cannot overflow fp32):
    # one cheap reduction instead of an element-wise isfinite; padding may hold anything
    finite = torch.isfinite(stacked.sum((2, 3), dtype=torch.float32)) | ~valid
    bad = (~finite.all(1)).nonzero().flatten().tolist()
    stacked = stacked.cpu().numpy()
    out = [stacked[b, : int(n)] for b, n in enumerate(out_len.cpu())]
    if bad:  # a diverged checkpoint, or values beyond float16's range: never cached, never trained on
        raise NonFiniteFeaturesError(f"upstream {up.name!r} ({up.fingerprint[:16]}): non-finite features "
                                     f"(NaN/inf, or beyond float16) for {len(bad)} of {len(out)} utterances "
                                     f"of a batch")
    return out


def extract_part(up: Upstream, corpus: Corpus, part: str, out: Path, layers: list[int], batch_seconds: float,
                 shard_utterances: int, device: torch.device, progress: Callable[[float], None] | None = None,
                 bf16: bool = False) -> dict:
    """Extract one part into `out`, resuming complete shards of the same upstream checkpoint and layers."""
    rows = corpus.read(part)
    durations = [r["duration"] for r in rows]
    order = np.argsort(durations, kind="stable")
    shards = [[rows[i]["id"] for i in order[s : s + shard_utterances]] for s in range(0, len(rows), shard_utterances)]
    plan_hash = hashlib.sha256("\n".join(",".join(s) for s in shards).encode()).hexdigest()
    meta = {"upstream": up.name, "checkpoint_sha256": up.fingerprint, "layers": layers, "dim": up.dim,
            "frame_rate": up.frame_rate, "dtype": "float16", "compute": "bf16" if bf16 else "fp32",
            "num_shards": len(shards), "plan": plan_hash,
            "part": part}
    meta_path = out / "meta.json"
    if out.exists() and (not meta_path.exists() or read_json(meta_path) != meta):
        shutil.rmtree(out)  # features of another checkpoint, layer choice or manifest: never mixed
    out.mkdir(parents=True, exist_ok=True)
    write_json(meta_path, meta)
    by_id = {r["id"]: r for r in rows}
    up.to(device, weights_dtype(device, bf16))
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
        with autocast(device, bf16):
            for batch in bucket_batches(ds.durations, batch_seconds):
                wav, lengths = collate_waves([ds[j] for j in batch])
                try:
                    batch_feats = featurize(up, wav, lengths, layers, device, bf16)
                except NonFiniteFeaturesError as e:
                    raise NonFiniteFeaturesError(f"{e} in part {part!r} (e.g. {ds.paths[batch[0]]}); "
                                                 "nothing written for this shard") from None
                for j, f in zip(batch, batch_feats, strict=True):
                    feats[j] = f
        writer.write(ids, [feats[j] for j in range(len(ids))])
        if progress:
            progress(secs)
    return {"part": part, "utterances": len(rows), "shards": len(shards), "reused_shards": done}


def extract_upstream(name: str, params: Params, corpus_dir: Path, out: Path) -> dict:
    """Features of the labeled pool and every test set from upstream params `upstreams.<name>` into `out`
    (`<out>/<part>/` shards and `<out>/upstream.json`); returns what upstream.json holds and the run's facts
    (wall seconds, real-time factor, shards reused after a crash)."""
    import time

    from tqdm import tqdm

    from labelbudget import upstreams
    from labelbudget.precision import use_bf16

    p = params.extract
    corpus = Corpus.load(corpus_dir)
    up = upstreams.load(name, params)
    layers = resolve_layers(p.layers, up)
    device = resolve_device(p.device)
    bf16 = use_bf16(p.precision, device)
    parts = [corpus.labeled, *(corpus.test_part(t) for t in corpus.tests)]
    total = sum(r["duration"] for part in parts for r in corpus.read(part))
    start, summary = time.time(), []
    with tqdm(total=round(total), desc=f"extract {name} on {device}{' (bf16)' if bf16 else ''}", unit="audio-s") as bar:
        for part in parts:
            summary.append(extract_part(up, corpus, part, out / part, layers, p.batch_seconds,
                                        p.shard_utterances, device, progress=bar.update, bf16=bf16))
    wall = time.time() - start
    # upstream.json holds what the features are, not how this run went: the same features give the same bytes,
    # so a re-extraction that changes nothing leaves every finetune that reads them up to date.
    info = {"upstream": up.name, "kind": params.upstreams[name].kind, "checkpoint_sha256": up.fingerprint,
            "layers": layers, "dim": up.dim, "frame_rate": up.frame_rate, "compute": "bf16" if bf16 else "fp32",
            "parts": [{k: v for k, v in s.items() if k != "reused_shards"} for s in summary],
            "audio_seconds": round(total, 1)}
    write_json(out / "upstream.json", info)
    return {**info, "parts": summary, "wall_seconds": round(wall, 1),
            "realtime_factor": round(total / max(wall, 1e-9), 1)}
