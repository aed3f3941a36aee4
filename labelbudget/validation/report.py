"""The gate's report: each rule with its offending rows (report.json) and a summary a person reads (summary.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labelbudget.manifest import Corpus

if TYPE_CHECKING:
    from labelbudget.schema import Validate

from labelbudget.validation.probing import shown
from labelbudget.validation.rules import Rule

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
        "corpus": shown(corpus.dir),
        "root": shown(corpus.root),
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
