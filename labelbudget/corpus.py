"""The embedded default corpus: a multi-domain speech corpus synthesized offline and deterministically.

Domains mirror the reference experiment's premise: the unlabeled pool covers many accents, voices, rates and
channels; the labeled pool a few clean voices; each test set is one held-out domain.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from labelbudget import audio, phones
from labelbudget.manifest import CLEAN_DIR, Corpus, write_manifest
from labelbudget.schema import TEST_SETS, Synth

ACCENTS = ["en-US", "en", "en-GB-x-rp", "en-029", "en-GB-scotland", "en-GB-x-gbclan", "en-GB-x-gbcwmd", "en-US-nyc"]
VARIANTS = [f"m{i}" for i in range(1, 9)] + [f"f{i}" for i in range(1, 6)] + ["klatt", "klatt2", "klatt3"]
LABELED_VOICES = [f"{a}+{v}" for a in ("en-US", "en", "en-GB-x-rp") for v in ("m1", "m2", "m3", "f1", "f2")]
HELD_OUT_VOICES = [f"{a}+{v}" for a in ("en-029", "en-GB-scotland", "en-US-nyc") for v in ("m5", "m6", "f3", "f4")]
AVG_UTTERANCE_S = 3.5  # planning estimate only; manifests carry the measured durations


def _plan_utterance(uid: str, text: str, domain: str, rng: np.random.Generator) -> dict:
    """Voice, rate, pitch and channel of one utterance, drawn for its domain."""
    u = {"id": uid, "text": text, "domain": domain, "rate": int(rng.integers(150, 201)),
         "pitch": int(rng.integers(35, 66)), "effect": None}
    if domain == "unlabeled":
        u["voice"] = f"{rng.choice(ACCENTS)}+{rng.choice(VARIANTS)}"
        u["rate"] = int(rng.integers(110, 261))
        r = rng.random()
        if r < 0.2:
            u["effect"] = ("noise", float(rng.uniform(0, 20)), str(rng.choice(["white", "pink", "hum"])))
        elif r < 0.35:
            u["effect"] = ("reverb", float(rng.uniform(0.2, 0.9)))
        elif r < 0.5:
            u["effect"] = ("telephone",)
        u["domain"] = "unlabeled-" + (u["effect"][0] if u["effect"] else "clean")
    elif domain == "unseen_accents":
        u["voice"] = str(rng.choice(HELD_OUT_VOICES))
    else:
        u["voice"] = str(rng.choice(LABELED_VOICES))
        if domain == "noisy":
            u["effect"] = ("noise", float(rng.uniform(5, 15)), str(rng.choice(["white", "pink", "hum"])))
        elif domain == "reverb":
            u["effect"] = ("reverb", float(rng.uniform(0.3, 0.8)))
        elif domain == "telephone":
            u["effect"] = ("telephone",)
        elif domain == "rate_extremes":
            u["rate"] = int(rng.choice([rng.integers(90, 116), rng.integers(250, 301)]))
    u["speaker"] = u["voice"]
    return u


def plan(cfg: Synth, seed: int) -> dict[str, list[dict]]:
    """Every utterance of every part (params `corpus.synth`), decided up front from the seed (text, voice, rate,
    channel)."""
    from labelbudget.synth import generate_sentences

    unknown = set(cfg.test_sets) - set(TEST_SETS)
    if unknown:
        raise ValueError(f"params corpus.synth.test_sets: unknown {sorted(unknown)}; choose from {TEST_SETS}")
    n_unl = max(1, round(cfg.unlabeled_hours * 3600 / AVG_UTTERANCE_S))
    n_lab = max(1, round(cfg.labeled_hours * 3600 / AVG_UTTERANCE_S))
    train = generate_sentences(n_unl + n_lab, "train", seed)
    test = generate_sentences(cfg.test_utterances * len(cfg.test_sets), "test", seed + 7)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[dict]] = {
        "unlabeled": [_plan_utterance(f"unl-{i:06d}", t, "unlabeled", rng) for i, t in enumerate(train[:n_unl])],
        "labeled": [_plan_utterance(f"lab-{i:06d}", t, "labeled", rng) for i, t in enumerate(train[n_unl:])],
    }
    for k, name in enumerate(cfg.test_sets):
        texts = test[k * cfg.test_utterances : (k + 1) * cfg.test_utterances]
        parts[f"test-{name}"] = [_plan_utterance(f"{name}-{i:05d}", t, name, rng) for i, t in enumerate(texts)]
    return parts


def _render_shard(job: tuple[int, list[dict], str]) -> list[dict]:
    """Synthesize one shard in a fresh process (espeak-ng's state is global and carries between calls)."""
    import ctypes

    from labelbudget.synth import Espeak

    shard_seed, utts, out_dir = job
    tts = Espeak()
    tts.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    tts.lib.espeak_ng_SetRandSeed(shard_seed)
    rng = np.random.default_rng(shard_seed)
    rows = []
    for u in utts:
        raw, segments = tts.synthesize_aligned(u["text"], u["voice"], u["rate"], u["pitch"])
        wav = audio.resample(raw, tts.sample_rate)
        # Positions follow the audio to 16 kHz; gain, noise and reverb keep the timing (the room response's
        # direct path is at lag 0), the telephone band-pass delays it by about a millisecond: negligible
        # against 10 ms frames.
        scale = audio.SAMPLE_RATE / tts.sample_rate
        phones = [[name, min(round(a * scale), len(wav)), min(round(b * scale), len(wav))]
                  for name, a, b in segments]
        wav = audio.peak_normalize(wav, float(rng.uniform(0.3, 0.8)))
        eff = u["effect"]
        if eff and u["domain"].startswith("unlabeled"):  # the targets of `clean_targets` pretraining
            audio.save(Path(out_dir).parent / CLEAN_DIR / f"{u['id']}.flac", np.clip(wav, -0.99, 0.99))
        if eff and eff[0] == "noise":
            wav = audio.add_noise(wav, eff[1], rng, eff[2])
        elif eff and eff[0] == "reverb":
            wav = audio.reverberate(wav, eff[1], rng)
        elif eff and eff[0] == "telephone":
            wav = audio.telephone(wav)
        wav = np.clip(wav, -0.99, 0.99)
        rel = f"{u['domain'].split('-')[0]}/{u['id']}.flac" if u["domain"].startswith("unlabeled") else None
        rel = rel or f"{u['id'].rsplit('-', 1)[0]}/{u['id']}.flac"
        audio.save(Path(out_dir) / rel, wav)
        rows.append({"id": u["id"], "audio": rel, "duration": round(len(wav) / audio.SAMPLE_RATE, 4),
                     "sample_rate": audio.SAMPLE_RATE, "text": u["text"], "speaker": u["speaker"],
                     "domain": u["domain"], "phones": phones})
    return rows


def synthesize(cfg: Synth, seed: int, out: Path, progress: Callable[[int], None] | None = None) -> Corpus:
    """Write audio, manifests and phone alignments (labelbudget.phones) of every part under `out` (audio in
    `out/audio`), and the clean rendering of every degraded unlabeled utterance (`out/clean`)."""
    parts = plan(cfg, seed)
    jobs, owners = [], []
    for part, utts in parts.items():
        for s in range(0, len(utts), cfg.shard_size):
            jobs.append((seed * 100_003 + len(jobs), utts[s : s + cfg.shard_size], str(out / "audio")))
            owners.append(part)
    rows: dict[str, list[dict]] = {p: [] for p in parts}
    workers = cfg.workers or os.cpu_count() or 1
    # A fresh process per shard makes the bytes independent of which worker drew which shard.
    with mp.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
        for part, shard_rows in zip(owners, pool.imap(_render_shard, jobs), strict=True):
            rows[part].extend(shard_rows)
            if progress:
                progress(len(shard_rows))
    corpus = Corpus(dir=out, root=out / "audio", tests=list(cfg.test_sets),
                    held_out_speakers=HELD_OUT_VOICES, source="synth")
    for part, r in rows.items():
        write_manifest(corpus.manifest_path(part), r)
        phones.write_part(out, part, {row["id"]: row["phones"] for row in r})
    phones.write_index(out, list(rows), "espeak-ng phoneme events", audio.SAMPLE_RATE)
    corpus.save_meta()
    return corpus


def count_utterances(cfg: Synth) -> int:
    return (max(1, round(cfg.unlabeled_hours * 3600 / AVG_UTTERANCE_S))
            + max(1, round(cfg.labeled_hours * 3600 / AVG_UTTERANCE_S)) + cfg.test_utterances * len(cfg.test_sets))
