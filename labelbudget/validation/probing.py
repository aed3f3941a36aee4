"""Every audio file decoded once (in a process pool): what the rules are asserted on."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from labelbudget import audio

if TYPE_CHECKING:
    pass


CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped (full scale of 16-bit PCM is 0.99997)
SILENT_DB = -240.0  # level reported for a file without samples


def shown(path: Any) -> str:
    """Paths inside the project relative to it: the DVC-tracked report must not depend on the checkout's place."""
    rel = os.path.relpath(os.path.abspath(path))
    return os.path.abspath(path) if rel.startswith("..") else rel


# --- per-file measurements ----------------------------------------------------------------------------------


def probe_file(path: str) -> dict[str, Any]:
    """Decode one file and measure what the rules need; a file that fails to decode is a result, not an
    error."""
    if not os.path.isfile(path):
        return {"exists": False}
    try:
        wav, sr = audio.load(path)
    except audio.AudioDecodeError as e:
        return {"exists": True, "decodes": False, "error": str(e)}
    samples = wav if wav.size else np.zeros(1, dtype=np.float32)
    return {
        "exists": True,
        "decodes": True,
        "error": "",
        "file_sample_rate": sr,
        "channels": 1 if wav.ndim == 1 else wav.shape[1],
        "frames": wav.shape[0],
        "rms_db": audio.rms_db(samples) if wav.size else SILENT_DB,
        "clipped_fraction": float(np.mean(np.abs(samples) >= CLIP_LEVEL)),
        # Hash of the decoded samples: the same audio re-encoded in another file or format still matches.
        "audio_hash": hashlib.blake2b(np.ascontiguousarray(wav).tobytes(), digest_size=16).hexdigest(),
    }


def probe_files(paths: list[str], workers: int = 0, progress: bool = True) -> dict[str, dict[str, Any]]:
    """`probe_file` over many files, in parallel; `workers=0` means one process per core."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(paths)))
    bar = tqdm(total=len(paths), desc="decode audio", unit="file", disable=not progress)
    out: dict[str, dict[str, Any]] = {}
    with bar:
        if workers == 1:
            results = map(probe_file, paths)
            for path, res in zip(paths, results, strict=True):
                out[path] = res
                bar.update()
        else:
            chunk = max(1, min(32, len(paths) // (workers * 8)))
            with mp.get_context("fork").Pool(workers) as pool:
                for path, res in zip(paths, pool.imap(probe_file, paths, chunksize=chunk), strict=True):
                    out[path] = res
                    bar.update()
    return out


# --- the dataframe ------------------------------------------------------------------------------------------
