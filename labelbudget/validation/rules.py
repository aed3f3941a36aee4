"""The rules: manifest rows and file measurements as one dataframe, and the Great Expectations suites over it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labelbudget.manifest import FIELDS, TEST_PREFIX, Corpus, inside
from labelbudget.text import illegal_chars, normalize

if TYPE_CHECKING:
    from labelbudget.schema import Validate

from labelbudget.validation.probing import probe_files, shown


@dataclass
class Rule:
    """One named rule of the report: one or more expectations whose offending rows are merged."""

    name: str
    suite: str
    description: str
    expectations: list = field(default_factory=list)
    show: list[str] = field(default_factory=list)  # extra columns that explain an offending row


def read_rows(corpus: Corpus) -> pd.DataFrame:
    """All manifest rows of all parts, as written; a line that is not a JSON object becomes a row of missing
    fields (reported by the schema rule with its line number) instead of stopping the gate."""
    records = []
    for part in corpus.parts:
        path = corpus.manifest_path(part)
        if not path.exists():
            continue  # reported by the parts_not_empty rule
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    rec = None
                rec = rec if isinstance(rec, dict) else {}
                records.append({"part": part, "line": lineno, **{k: rec.get(k) for k in FIELDS},
                                **{f"type_of_{k}": _type_name(rec, k) for k in FIELDS}})
    columns = ["part", "line", *FIELDS, *(f"type_of_{k}" for k in FIELDS)]
    return pd.DataFrame.from_records(records, columns=columns).astype(object)


def _type_name(rec: dict, key: str) -> str | None:
    if key not in rec:
        return "missing"
    return None if rec[key] is None else type(rec[key]).__name__  # null values are the not_null rule's


def allowed_pairs(cfg: Validate, corpus: Corpus) -> set[frozenset[str]]:
    """Pairs of parts that may share utterances: labeled inside unlabeled, the usual self-supervised set-up
    (Libri-light holds LibriSpeech's training audio). `labeled_in_unlabeled`: auto = allowed for ingested
    corpora, not for the synthesized one; allow; forbid. Audio shared with a test set always fails."""
    mode = cfg.labeled_in_unlabeled
    allow = mode == "allow" or (mode == "auto" and corpus.source != "synth")
    return {frozenset((corpus.labeled, corpus.unlabeled))} if allow else set()


def _shared_with(keys: list, parts: list[str], allowed: set[frozenset[str]], own: bool = True
                 ) -> list[str | None]:
    """Per row: the other parts holding the same key (with `own`, its own part too if the key repeats in it),
    comma-joined; pairs in `allowed` do not count. None where the key is missing."""
    where: dict[Any, list[str]] = {}
    for k, p in zip(keys, parts, strict=True):
        if isinstance(k, str):
            where.setdefault(k, []).append(p)
    out: list[str | None] = []
    for k, p in zip(keys, parts, strict=True):
        if not isinstance(k, str):
            out.append(None)
            continue
        holders = where[k]
        others = {q for q in holders if q != p and frozenset((p, q)) not in allowed}
        out.append(",".join(sorted(others | ({p} if own and holders.count(p) > 1 else set()))))
    return out


def add_checks(df: pd.DataFrame, corpus: Corpus, workers: int = 0, progress: bool = True,
               allowed: set[frozenset[str]] | None = None) -> pd.DataFrame:
    """Add the measured and derived columns the expectations assert on (None where a check does not apply).
    `allowed`: pairs of parts that may share ids and audio (see `allowed_pairs`)."""
    allowed = allowed or set()
    df = df.copy()
    root = os.path.normpath(str(corpus.root))
    files = [os.path.normpath(os.path.join(root, a)) if isinstance(a, str) and a else None
             for a in df["audio"]]
    df["file"] = files
    # `..` and symlinks resolved; a file outside the root is reported, never opened
    df["inside_root"] = [None if f is None else inside(root, f) for f in files]

    probes = probe_files(sorted({f for f, ok in zip(files, df["inside_root"], strict=True) if f is not None and ok}),
                         workers=workers, progress=progress)
    for col in ("exists", "decodes", "error", "file_sample_rate", "channels", "frames", "rms_db",
                "clipped_fraction", "audio_hash"):
        df[col] = [None if f is None else probes.get(f, {}).get(col) for f in files]

    # Numeric checks need numeric columns (None -> NaN, which expectations skip as "not applicable").
    for col in ("file_sample_rate", "channels", "frames", "rms_db", "clipped_fraction"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    # Declared values of the wrong type are the schema rule's; the value rules check well-typed ones only.
    df["duration_s"] = [float(d) if type(d) in (int, float) else np.nan for d in df["duration"]]
    df["declared_sample_rate"] = [float(r) if type(r) is int else np.nan for r in df["sample_rate"]]
    df["decoded_duration"] = df["frames"] / df["file_sample_rate"]
    df["duration_error"] = (df["duration_s"] - df["decoded_duration"]).abs()

    is_test = df["part"].str.startswith(TEST_PREFIX)
    transcribed = is_test | (df["part"] == corpus.labeled)
    text = [t if isinstance(t, str) else None for t in df["text"]]
    # Transcripts are checked where they are used: labeled and test parts (unlabeled text is ignored).
    checked = [t if tr else None for t, tr in zip(text, transcribed, strict=True)]
    df["norm_text"] = [None if t is None else normalize(t) for t in checked]
    df["illegal_chars"] = [None if t is None else "".join(sorted(illegal_chars(t))) for t in checked]

    # Leakage: training rows are unlabeled and labeled; their normalized text is compared with the test text.
    norm_all = [normalize(t) if t is not None else "" for t in text]
    df["training_text"] = [n if n and not te else None for n, te in zip(norm_all, is_test, strict=True)]
    parts = list(df["part"])
    df["same_audio_in"] = _shared_with(list(df["audio_hash"]), parts, allowed, own=False)
    df["same_id_in"] = _shared_with(list(df["id"]), parts, allowed)
    df["labeled_speaker"] = [s if p == corpus.labeled and isinstance(s, str) else None
                             for s, p in zip(df["speaker"], df["part"], strict=True)]
    return df


def sentences_of_tests(df: pd.DataFrame) -> list[str]:
    rows = df[df["part"].str.startswith(TEST_PREFIX)]
    return sorted({n for n in rows["text"].map(lambda t: normalize(t) if isinstance(t, str) else "") if n})


# --- the rules ----------------------------------------------------------------------------------------------


def build_rules(cfg: Validate, corpus: Corpus, test_text: list[str], allowed: set[frozenset[str]] = frozenset()
                ) -> list[Rule]:
    """Every rule of the gate, each expectation tagged with its rule's name (the report groups by it)."""
    rules = [*_manifest_rules(corpus, allowed), *_audio_rules(cfg, corpus), *_text_rules(corpus, test_text, allowed)]
    for rule in rules:
        for e in rule.expectations:
            e.meta = {"rule": rule.name}
    return rules


def _manifest_rules(corpus: Corpus, allowed: set[frozenset[str]]) -> list[Rule]:
    import great_expectations.expectations as gxe

    def types(f: str) -> list[str]:
        t = FIELDS[f]
        return [x.__name__ for x in (t if isinstance(t, tuple) else (t,))]

    return [
        Rule("schema", "manifest", "every row has the manifest fields with their types "
             "(duration a number, sample_rate an integer, the others strings)",
             [gxe.ExpectColumnValuesToBeInSet(column=f"type_of_{f}", value_set=types(f)) for f in FIELDS]),
        Rule("not_null", "manifest", "no manifest field is null",
             [gxe.ExpectColumnValuesToNotBeNull(column=f) for f in FIELDS]),
        Rule("unique_id", "manifest", "utterance ids are unique within and across parts"
             + (" (labeled rows may reappear in unlabeled: validate.labeled_in_unlabeled)" if allowed else ""),
             [gxe.ExpectColumnValuesToBeInSet(column="same_id_in", value_set=[""])]),
        Rule("parts_not_empty", "manifest", f"every part has rows: {', '.join(corpus.parts)}",
             [gxe.ExpectColumnDistinctValuesToContainSet(column="part", value_set=corpus.parts)]),
    ]


def _audio_rules(cfg: Validate, corpus: Corpus) -> list[Rule]:
    import great_expectations.expectations as gxe

    sr, lo, hi = cfg.sample_rate, cfg.min_duration, cfg.max_duration
    tol, silence_db, max_clipped = cfg.duration_tolerance, cfg.silence_db, cfg.max_clipped_fraction
    return [
        Rule("file_exists", "audio", "every audio file exists",
             [gxe.ExpectColumnValuesToBeInSet(column="exists", value_set=[True])]),
        Rule("decodes", "audio", "every audio file decodes",
             [gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True])], show=["error"]),
        Rule("path_inside_root", "audio", f"every audio path stays inside the corpus root {shown(corpus.root)}",
             [gxe.ExpectColumnValuesToBeInSet(column="inside_root", value_set=[True])], show=["audio"]),
        Rule("sample_rate", "audio", f"declared and actual sample rate are {sr} Hz",
             [gxe.ExpectColumnValuesToBeInSet(column="declared_sample_rate", value_set=[sr]),
              gxe.ExpectColumnValuesToBeInSet(column="file_sample_rate", value_set=[sr])]),
        Rule("mono", "audio", "every file has one channel",
             [gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[1])]),
        Rule("duration_bounds", "audio", f"declared duration within [{lo}, {hi}] s",
             [gxe.ExpectColumnValuesToBeBetween(column="duration_s", min_value=lo, max_value=hi)]),
        Rule("duration_matches_audio", "audio",
             f"declared duration equals the decoded length within {tol} s",
             [gxe.ExpectColumnValuesToBeBetween(column="duration_error", max_value=tol)],
             show=["duration_s", "decoded_duration"]),
        Rule("not_silent", "audio", f"RMS level above {silence_db} dBFS",
             [gxe.ExpectColumnValuesToBeBetween(column="rms_db", min_value=silence_db, strict_min=True)]),
        Rule("not_clipped", "audio", f"at most {max_clipped:.2%} of samples at full scale",
             [gxe.ExpectColumnValuesToBeBetween(column="clipped_fraction", max_value=max_clipped)]),
    ]


def _text_rules(corpus: Corpus, test_text: list[str], allowed: set[frozenset[str]]) -> list[Rule]:
    """Transcripts, and leakage between parts (test sentences, audio, held-out speakers)."""
    import great_expectations.expectations as gxe

    return [
        Rule("transcript_not_empty", "transcripts",
             "labeled and test transcripts are not empty once normalized",
             [gxe.ExpectColumnValueLengthsToBeBetween(column="norm_text", min_value=1)], show=["text"]),
        Rule("transcript_vocabulary", "transcripts",
             "labeled and test transcripts use only vocabulary characters (a-z, apostrophe, space; "
             "punctuation is dropped)",
             [gxe.ExpectColumnValuesToBeInSet(column="illegal_chars", value_set=[""])], show=["text"]),
        Rule("no_test_sentence_in_training", "leakage",
             "no test sentence (normalized) in the unlabeled or labeled data",
             [gxe.ExpectColumnValuesToNotBeInSet(column="training_text", value_set=test_text)]),
        Rule("no_duplicate_audio_across_parts", "leakage",
             "no identical audio (decoded samples) in two parts"
             + (" (labeled audio may reappear in unlabeled: validate.labeled_in_unlabeled)" if allowed else ""),
             [gxe.ExpectColumnValuesToBeInSet(column="same_audio_in", value_set=[""])]),
        Rule("no_held_out_speaker_in_labeled", "leakage",
             f"no held-out speaker in the labeled data ({len(corpus.held_out_speakers)} declared)",
             [gxe.ExpectColumnValuesToNotBeInSet(column="labeled_speaker",
                                                  value_set=list(corpus.held_out_speakers))]),
    ]


def run_expectations(df: pd.DataFrame, rules: list[Rule]) -> list:
    """One Great Expectations suite per rule group, validated against the dataframe; returns the results."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no usage reports from a data gate, unless asked
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # our own bar is enough
    batch = (ctx.data_sources.add_pandas("manifests").add_dataframe_asset("utterances")
             .add_batch_definition_whole_dataframe("all"))
    results = []
    for suite_name in dict.fromkeys(r.suite for r in rules):
        # Expectations passed to the constructor are stored once, not one store round-trip each (~20 ms).
        expectations = [e for r in rules if r.suite == suite_name for e in r.expectations]
        suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch, suite=suite))
        results.extend(vd.run(batch_parameters={"dataframe": df}, result_format="COMPLETE").results)
    return results


# --- the report ---------------------------------------------------------------------------------------------


# Numeric columns hold floats (NaN where not applicable); these are shown as integers in the report.
