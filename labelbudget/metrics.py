"""Word and character error rates: corpus-level per test set, weighted over test sets, bootstrap intervals.

- Corpus-level rate = (S + D + I) / N summed over a test set's utterances (jiwer's definition), after the one
  shared normaliser (`labelbudget.text.normalize`) on both references and hypotheses. CER counts spaces as
  characters.
- An utterance whose normalised reference is empty adds its hypothesis length as insertions and nothing to N
  (jiwer 4 returns 2.0 as the WER of a lone empty reference instead of raising; a test set whose references
  are all empty has no defined rate and raises `MetricsError`).
- Weighted rate = sum_i w_i * rate_i with weights normalised to sum to 1. The default weights are the
  reference word counts, which makes the weighted WER the pooled WER over all test sets.
- Bootstrap 95% intervals resample utterances with replacement, independently within each test set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from labelbudget.errors import LabelbudgetError
from labelbudget.text import normalize

WORD_COUNT_WEIGHTS = "words"  # params value: weight each test set by its reference word count
EQUAL_WEIGHTS = "equal"


class MetricsError(LabelbudgetError, ValueError):
    pass


@dataclass
class Counts:
    """Edit counts of one utterance (or a sum of them) for words and characters."""

    word_errors: int
    words: int
    char_errors: int
    chars: int

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.word_errors + other.word_errors, self.words + other.words,
                      self.char_errors + other.char_errors, self.chars + other.chars)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _edit_counts(output) -> list[tuple[int, int]]:
    """(errors, reference length) per sentence from a jiwer alignment output."""
    out = []
    for chunks in output.alignments:
        errors = n = 0
        for c in chunks:
            ref_len, hyp_len = c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx
            n += ref_len
            if c.type in ("substitute", "delete"):
                errors += ref_len
            elif c.type == "insert":
                errors += hyp_len
        out.append((errors, n))
    return out


def utterance_counts(refs: Sequence[str], hyps: Sequence[str]) -> list[Counts]:
    """Word and character edit counts of each (reference, hypothesis) pair, both normalised first."""
    import jiwer

    if len(refs) != len(hyps):
        raise MetricsError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        return []
    refs = [normalize(r) for r in refs]
    hyps = [normalize(h) for h in hyps]
    words = _edit_counts(jiwer.process_words(refs, hyps))
    chars = _edit_counts(jiwer.process_characters(refs, hyps))
    return [Counts(we, wn, ce, cn) for (we, wn), (ce, cn) in zip(words, chars, strict=True)]


def total(counts: Sequence[Counts]) -> Counts:
    out = Counts(0, 0, 0, 0)
    for c in counts:
        out = out + c
    return out


def rates(c: Counts, name: str = "test set") -> dict[str, float]:
    if c.words == 0 or c.chars == 0:
        raise MetricsError(f"{name}: every reference is empty after normalisation; WER/CER are undefined")
    return {"wer": c.word_errors / c.words, "cer": c.char_errors / c.chars}


def corpus_scores(refs: Sequence[str], hyps: Sequence[str], name: str = "test set") -> dict[str, float]:
    """Corpus-level WER and CER of one test set, plus the counts behind them."""
    c = total(utterance_counts(refs, hyps))
    return {**rates(c, name), **c.as_dict(), "utterances": len(refs)}


# --- weights ------------------------------------------

def check_weights(spec: str | Mapping[str, float] | None, tests: Sequence[str]) -> None:
    """Fail early (before any training) when the weights in params do not match the test sets."""
    if spec is None or spec in (WORD_COUNT_WEIGHTS, EQUAL_WEIGHTS):
        return
    if isinstance(spec, str):
        raise MetricsError(f"evaluate.weights: unknown scheme {spec!r}; use {WORD_COUNT_WEIGHTS!r}, "
                           f"{EQUAL_WEIGHTS!r} or a mapping test set -> weight")
    unknown = sorted(set(spec) - set(tests))
    missing = sorted(set(tests) - set(spec))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"weights name test sets that do not exist: {unknown}")
        if missing:
            parts.append(f"test sets without a weight: {missing}")
        raise MetricsError(f"evaluate.weights: {'; '.join(parts)} (test sets: {list(tests)})")
    bad = {k: v for k, v in spec.items() if not isinstance(v, (int, float)) or v < 0}
    if bad or sum(spec.values()) <= 0:
        raise MetricsError(f"evaluate.weights: weights must be non-negative numbers with a positive sum: "
                           f"{spec}")


def resolve_weights(spec: str | Mapping[str, float] | None,
                    word_counts: Mapping[str, int]) -> dict[str, float]:
    """Normalised weights per test set: from params, or the reference word counts by default."""
    tests = list(word_counts)
    check_weights(spec, tests)
    if spec is None or spec == WORD_COUNT_WEIGHTS:
        raw = {t: float(word_counts[t]) for t in tests}
    elif spec == EQUAL_WEIGHTS:
        raw = {t: 1.0 for t in tests}
    else:
        raw = {t: float(spec[t]) for t in tests}
    s = sum(raw.values())
    if s <= 0:
        raise MetricsError("weights sum to zero (no reference words in any test set)")
    return {t: v / s for t, v in raw.items()}


def weights_description(spec: str | Mapping[str, float] | None) -> str:
    if spec is None or spec == WORD_COUNT_WEIGHTS:
        return "reference word counts"
    if spec == EQUAL_WEIGHTS:
        return "equal"
    return "explicit (evaluate.weights)"


def weighted(values: Mapping[str, float], weights: Mapping[str, float]) -> float:
    return float(sum(weights[t] * values[t] for t in weights))


# --- bootstrap ------------------------------------------

def resample_indices(n_utts: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_utts) utterance indices drawn with replacement; share them to pair several systems."""
    return rng.integers(0, n_utts, size=(n_boot, n_utts))


def bootstrap_rates(errors: np.ndarray, totals: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Corpus-level rate (sum errors / sum reference length) of each bootstrap replicate."""
    e = np.asarray(errors, dtype=float)[idx].sum(axis=1)
    n = np.asarray(totals, dtype=float)[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, e / np.maximum(n, 1), np.nan)


def interval(samples: np.ndarray, ci: float = 0.95) -> tuple[float, float]:
    lo, hi = np.nanpercentile(samples, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


def bootstrap_ci(errors: Sequence[int], totals: Sequence[int], n_boot: int = 1000, ci: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile interval of one test set's corpus-level rate, resampling utterances."""
    idx = resample_indices(len(errors), n_boot, np.random.default_rng(seed))
    return interval(bootstrap_rates(np.asarray(errors), np.asarray(totals), idx), ci)


def weighted_bootstrap(per_test: Mapping[str, tuple[Sequence[int], Sequence[int]]],
                       weights: Mapping[str, float], n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Replicates of the weighted rate, each test set resampled on its own (test sets are fixed strata)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(n_boot)
    for t in weights:
        errors, totals = per_test[t]
        out += weights[t] * bootstrap_rates(np.asarray(errors), np.asarray(totals),
                                            resample_indices(len(errors), n_boot, rng))
    return out


def score_run(rows: Sequence[dict], weight_spec: str | Mapping[str, float] | None, n_boot: int = 1000,
              ci: float = 0.95, seed: int = 0) -> dict:
    """Metrics of one model from its per-utterance rows (`test_set`, `word_errors`, `words`, `char_errors`,
    `chars`): per test set WER/CER with intervals, and the weighted WER/CER with intervals."""
    by_test: dict[str, list[dict]] = {}
    for r in rows:
        by_test.setdefault(r["test_set"], []).append(r)
    tests: dict[str, dict] = {}
    for t, rs in by_test.items():
        c = total([Counts(r["word_errors"], r["words"], r["char_errors"], r["chars"]) for r in rs])
        tests[t] = {**rates(c, t), **c.as_dict(), "utterances": len(rs)}
        for m, e, n in (("wer", "word_errors", "words"), ("cer", "char_errors", "chars")):
            lo, hi = bootstrap_ci([r[e] for r in rs], [r[n] for r in rs], n_boot, ci, seed)
            tests[t][f"{m}_ci"] = [lo, hi]
    weights = resolve_weights(weight_spec, {t: v["words"] for t, v in tests.items()})
    out = {"tests": tests, "weights": weights, "weights_source": weights_description(weight_spec),
           "weighted": {}, "ci_level": ci, "bootstrap": n_boot}
    for m, e, n in (("wer", "word_errors", "words"), ("cer", "char_errors", "chars")):
        per_test = {t: ([r[e] for r in by_test[t]], [r[n] for r in by_test[t]]) for t in tests}
        reps = weighted_bootstrap(per_test, weights, n_boot, seed)
        out["weighted"][m] = weighted({t: v[m] for t, v in tests.items()}, weights)
        out["weighted"][f"{m}_ci"] = list(interval(reps, ci))
    return out
