"""The data gate: Great Expectations suites over every manifest row plus checks of every audio file.

Every file is decoded once (in a process pool) and what was measured becomes columns of one dataframe, a row
per utterance of every part (sample rate, channels, frames, RMS level, clipped fraction, content hash, ...).
Great Expectations then asserts the rules on those columns, so each failing rule comes back with the exact
rows that broke it. Validation only reads: it never modifies, moves or deletes a file.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from labelbudget import audio
from labelbudget.io import write_json, write_text
from labelbudget.manifest import FIELDS, TEST_PREFIX, Corpus, inside
from labelbudget.text import illegal_chars, normalize

if TYPE_CHECKING:
    from labelbudget.schema import Validate

CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped (full scale of 16-bit PCM is 0.99997)
SILENT_DB = -240.0  # level reported for a file without samples


@dataclass
class Rule:
    """One named rule of the report: one or more expectations whose offending rows are merged."""

    name: str
    suite: str
    description: str
    expectations: list = field(default_factory=list)
    show: list[str] = field(default_factory=list)  # extra columns that explain an offending row


def _shown(path: Any) -> str:
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
    import great_expectations.expectations as gxe

    def types(f: str) -> list[str]:
        t = FIELDS[f]
        return [x.__name__ for x in (t if isinstance(t, tuple) else (t,))]

    sr, lo, hi = cfg.sample_rate, cfg.min_duration, cfg.max_duration
    tol, silence_db, max_clipped = cfg.duration_tolerance, cfg.silence_db, cfg.max_clipped_fraction
    rules = [
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
        Rule("file_exists", "audio", "every audio file exists",
             [gxe.ExpectColumnValuesToBeInSet(column="exists", value_set=[True])]),
        Rule("decodes", "audio", "every audio file decodes",
             [gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True])], show=["error"]),
        Rule("path_inside_root", "audio", f"every audio path stays inside the corpus root {_shown(corpus.root)}",
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
    for rule in rules:
        for e in rule.expectations:
            e.meta = {"rule": rule.name}
    return rules


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
INT_COLUMNS = {"declared_sample_rate", "file_sample_rate", "channels", "frames"}


def _plain(v: Any, as_int: bool = False) -> Any:
    """JSON-friendly scalar: numpy types unwrapped, NaN as null."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    return int(v) if as_int and isinstance(v, float) else v


def _value(df: pd.DataFrame, i: int, column: str) -> Any:
    return _plain(df.at[i, column], as_int=column in INT_COLUMNS)


def _row(df: pd.DataFrame, i: int) -> dict[str, Any]:
    return {"part": df.at[i, "part"], "line": _value(df, i, "line"), "id": _value(df, i, "id"),
            "file": df.at[i, "file"], "values": {}}


def _errors(info: dict | None) -> list[str]:
    """Messages of expectations that raised; GX gives one flat dict, or one per metric that failed."""
    if not info:
        return []
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    return list(dict.fromkeys(str(i.get("exception_message")) for i in infos if i.get("raised_exception")))


def make_report(df: pd.DataFrame, rules: list[Rule], results: list, corpus: Corpus, cfg: Validate) -> dict:
    by_rule: dict[str, dict] = {r.name: {"suite": r.suite, "description": r.description, "passed": True,
                                         "count": 0, "rows": [], "errors": []} for r in rules}
    offending: dict[str, dict[int, dict]] = {r.name: {} for r in rules}
    show = {r.name: r.show for r in rules}
    for res in results:
        name = res.expectation_config.meta["rule"]
        entry = by_rule[name]
        entry["errors"].extend(_errors(res.exception_info))
        if res.success:
            continue
        entry["passed"] = False
        column = res.expectation_config.kwargs.get("column")
        if "partial_missing_list" in res.result:  # the table-level parts check: missing parts are the rows
            missing = set(res.result["partial_missing_list"])
            for part in (p for p in corpus.parts if p in missing):
                entry["rows"].append({"part": part, "line": None, "id": None,
                                      "file": str(corpus.manifest_path(part)), "values": {"rows": 0}})
            continue
        for i in res.result.get("unexpected_index_list") or []:
            row = offending[name].setdefault(i, _row(df, i))
            for col in (column, *show[name]):
                row["values"][col] = _value(df, i, col)
    for name, rows in offending.items():
        by_rule[name]["rows"].extend(rows[i] for i in sorted(rows))
        by_rule[name]["count"] = len(by_rule[name]["rows"])
    failed = [n for n, e in by_rule.items() if not e["passed"]]
    return {
        "passed": not failed,
        "failed_rules": failed,
        "corpus": _shown(corpus.dir),
        "root": _shown(corpus.root),
        "source": corpus.source,
        "parts": {p: int((df["part"] == p).sum()) for p in corpus.parts},
        "files": int(df["file"].nunique()),
        "params": cfg.model_dump(),
        "rules": by_rule,
    }


def _cell(v: Any) -> str:
    return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")


PAIR_COLUMNS = ("same_audio_in", "same_id_in")  # rules about rows shared between parts


def _by_pair(rows: list[dict]) -> dict[str, list[dict]]:
    """Offending rows grouped by the pair of parts they link (rarest first), or one group for other rules."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        other = next((row["values"][c] for c in PAIR_COLUMNS if row["values"].get(c)), None)
        keys = [" & ".join(sorted({row["part"], o})) for o in other.split(",")] if other else ["all"]
        for key in dict.fromkeys(keys):
            groups.setdefault(key, []).append(row)
    return dict(sorted(groups.items(), key=lambda kv: len(kv[1])))


def summary_markdown(report: dict, max_rows: int = 10) -> str:
    verdict = "PASSED" if report["passed"] else f"FAILED ({len(report['failed_rules'])} rules)"
    parts = ", ".join(f"{p} {n}" for p, n in report["parts"].items())
    lines = [f"# Data validation: {verdict}", "",
             f"Corpus `{report['corpus']}` ({report['source']}), audio root `{report['root']}`.",
             f"Rows per part: {parts}; {report['files']} audio files.", "",
             "| rule | suite | result | offending rows |", "|---|---|---|---|"]
    for name, r in report["rules"].items():
        lines.append(f"| {name} | {r['suite']} | {'pass' if r['passed'] else '**FAIL**'} | {r['count']} |")
    for name in report["failed_rules"]:
        r = report["rules"][name]
        lines += ["", f"## {name}: {r['count']} offending rows", "", f"Rule: {r['description']}.", ""]
        lines += [f"Error while checking: {e}" for e in r["errors"]]
        groups = _by_pair(r["rows"])
        if len(groups) > 1:  # one leak must not hide another: counts and rows per pair of parts
            lines += ["By pair of parts: " + "; ".join(f"{g}: {len(rows)}" for g, rows in groups.items()), ""]
        lines += ["| part | line | id | file | values |", "|---|---|---|---|---|"]
        shown: set[int] = set()
        for rows in groups.values():
            for row in [x for x in rows if id(x) not in shown][:max_rows]:
                values = ", ".join(f"{k}={v!r}" for k, v in row["values"].items())
                cells = (row["part"], row["line"], row["id"], row["file"], values)
                lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
                shown.add(id(row))
        if r["count"] > len(shown):
            lines.append(f"\n... and {r['count'] - len(shown)} more rows in report.json")
    return "\n".join(lines) + "\n"


# --- entry points -------------------------------------------------------------------------------------------


def validate_corpus(corpus: Corpus, cfg: Validate, progress: bool = True) -> dict:
    """Run every rule over every part of `corpus` with the `validate` params `cfg`; return the report."""
    allowed = allowed_pairs(cfg, corpus)
    df = add_checks(read_rows(corpus), corpus, workers=cfg.workers, progress=progress, allowed=allowed)
    rules = build_rules(cfg, corpus, sentences_of_tests(df), allowed)
    return make_report(df, rules, run_expectations(df, rules), corpus, cfg)


def write_report(report: dict, out_dir: str | Path, max_rows: int = 10) -> str:
    """Write `report.json` and `summary.md` into `out_dir`; return the summary text."""
    out_dir = Path(out_dir)
    summary = summary_markdown(report, max_rows)
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "summary.md", summary)
    return summary
