"""The Great Expectations gate: a clean corpus passes; a corpus with exactly one defect fails on exactly the
rule for it, and the report names that rule and the offending row and file."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from corpora import SR, VALIDATE_CFG, build_corpus, build_librispeech, tone, write_audio
from defaults import ingest

from labelbudget.errors import EXIT_KNOWN
from labelbudget.io import write_jsonl
from labelbudget.manifest import Corpus
from labelbudget.validation import summary_markdown, validate_corpus, write_report

REPO = Path(__file__).resolve().parent.parent


def validate(corpus: Corpus) -> dict:
    return validate_corpus(corpus, VALIDATE_CFG, progress=False)


def edit_row(corpus: Corpus, part: str, uid: str, **changes: object) -> None:
    """Rewrite one manifest row, raw: defects that the manifest writer would refuse stay possible."""
    rows = corpus.read(part)
    for r in rows:
        if r["id"] == uid:
            r.update(changes)
    write_jsonl(corpus.manifest_path(part), rows)


def audio_of(corpus: Corpus, part: str, uid: str) -> Path:
    return corpus.root / part / f"{uid}.flac"


# Each defect edits a clean corpus and returns (the rule that must fail, the ids it must name).
Defect = Callable[[Corpus], tuple[str, set[str]]]


def corrupt_file(c: Corpus) -> tuple[str, set[str]]:
    audio_of(c, "labeled", "l-001").write_bytes(b"fLaC but not really a flac file")
    return "decodes", {"l-001"}


def wrong_sample_rate(c: Corpus) -> tuple[str, set[str]]:
    write_audio(audio_of(c, "labeled", "l-001"), tone(seed=50, sr=8000), sr=8000)
    edit_row(c, "labeled", "l-001", sample_rate=8000)  # declared truthfully, as ingestion would
    return "sample_rate", {"l-001"}


def sample_rate_declared_wrongly(c: Corpus) -> tuple[str, set[str]]:
    # The manifest still says 16 kHz.
    write_audio(audio_of(c, "labeled", "l-001"), tone(seed=50, sr=8000), sr=8000)
    return "sample_rate", {"l-001"}


def stereo(c: Corpus) -> tuple[str, set[str]]:
    write_audio(audio_of(c, "labeled", "l-001"), tone(seed=50, channels=2))
    return "mono", {"l-001"}


def empty_transcript(c: Corpus) -> tuple[str, set[str]]:
    edit_row(c, "labeled", "l-001", text="")
    return "transcript_not_empty", {"l-001"}


def punctuation_only_transcript(c: Corpus) -> tuple[str, set[str]]:
    edit_row(c, "test-clean", "t-001", text=" ... ")
    return "transcript_not_empty", {"t-001"}


def illegal_characters(c: Corpus) -> tuple[str, set[str]]:
    edit_row(c, "labeled", "l-001", text="order 66 at the caf\u00e9 n\u00ba 5")
    return "transcript_vocabulary", {"l-001"}


def duplicate_id(c: Corpus) -> tuple[str, set[str]]:
    edit_row(c, "test-clean", "t-000", id="l-001")  # same id as a labeled row
    return "unique_id", {"l-001"}


def missing_file(c: Corpus) -> tuple[str, set[str]]:
    audio_of(c, "labeled", "l-001").unlink()
    return "file_exists", {"l-001"}


def path_outside_root(c: Corpus) -> tuple[str, set[str]]:
    outside = c.root.parent / "elsewhere" / "l-001.flac"
    outside.parent.mkdir()
    shutil.move(audio_of(c, "labeled", "l-001"), outside)
    edit_row(c, "labeled", "l-001", audio="../elsewhere/l-001.flac")
    return "path_inside_root", {"l-001"}


def silent(c: Corpus) -> tuple[str, set[str]]:
    write_audio(audio_of(c, "labeled", "l-001"), 1e-5 * tone(seed=50))
    return "not_silent", {"l-001"}


def clipped(c: Corpus) -> tuple[str, set[str]]:
    write_audio(audio_of(c, "labeled", "l-001"), tone(seed=50, amplitude=3.0))  # clipped when written
    return "not_clipped", {"l-001"}


def duration_mismatch(c: Corpus) -> tuple[str, set[str]]:
    edit_row(c, "labeled", "l-001", duration=1.5)
    return "duration_matches_audio", {"l-001"}


def too_short(c: Corpus) -> tuple[str, set[str]]:
    write_audio(audio_of(c, "labeled", "l-001"), tone(seed=50, seconds=0.1))
    edit_row(c, "labeled", "l-001", duration=0.1)
    return "duration_bounds", {"l-001"}


def sentence_from_test_set_in_training(c: Corpus) -> tuple[str, set[str]]:
    test_text = c.read("test-clean")[0]["text"]
    edit_row(c, "unlabeled", "u-002", text=test_text.upper() + "!")  # same sentence once normalized
    return "no_test_sentence_in_training", {"u-002"}


def identical_audio_across_parts(c: Corpus) -> tuple[str, set[str]]:
    shutil.copyfile(audio_of(c, "test-clean", "t-000"), audio_of(c, "labeled", "l-001"))
    return "no_duplicate_audio_across_parts", {"l-001", "t-000"}


def held_out_speaker_in_labeled(c: Corpus) -> tuple[str, set[str]]:
    edit_row(c, "labeled", "l-001", speaker="spk-t0")
    return "no_held_out_speaker_in_labeled", {"l-001"}


def null_field(c: Corpus) -> tuple[str, set[str]]:
    edit_row(c, "labeled", "l-001", speaker=None)
    return "not_null", {"l-001"}


def wrong_type(c: Corpus) -> tuple[str, set[str]]:
    edit_row(c, "labeled", "l-001", sample_rate="16000")
    return "schema", {"l-001"}


DEFECTS: list[Defect] = [
    corrupt_file, wrong_sample_rate, sample_rate_declared_wrongly, stereo, empty_transcript,
    punctuation_only_transcript, illegal_characters, duplicate_id, missing_file, path_outside_root, silent,
    clipped, duration_mismatch, too_short, sentence_from_test_set_in_training, identical_audio_across_parts,
    held_out_speaker_in_labeled, null_field, wrong_type,
]


def test_clean_corpus_passes_every_rule(tmp_path: Path) -> None:
    report = validate(build_corpus(tmp_path))
    assert report["passed"], summary_markdown(report)
    assert all(r["passed"] and r["count"] == 0 for r in report["rules"].values())
    assert report["parts"] == {"unlabeled": 3, "labeled": 3, "test-clean": 2}


@pytest.mark.parametrize("defect", DEFECTS, ids=lambda d: d.__name__)
def test_corpus_with_one_defect_fails_on_that_rule_naming_row_and_file(tmp_path: Path,
                                                                       defect: Defect) -> None:
    corpus = build_corpus(tmp_path)
    rule, ids = defect(corpus)
    report = validate(corpus)

    assert not report["passed"]
    assert report["failed_rules"] == [rule], summary_markdown(report)
    rows = report["rules"][rule]["rows"]
    assert {r["id"] for r in rows} == ids
    for row in rows:
        declared = corpus.read(row["part"])[row["line"] - 1]["audio"]
        assert row["file"] == os.path.normpath(corpus.root / declared)
    summary = summary_markdown(report)
    assert f"## {rule}: {len(rows)} offending rows" in summary
    assert rows[0]["file"] in summary


def labeled_copied_into_unlabeled(c: Corpus) -> None:
    """The self-supervised set-up: every labeled utterance is also in the unlabeled pool (same id, same audio)."""
    rows = c.read("labeled")
    write_jsonl(c.manifest_path("unlabeled"), c.read("unlabeled") + rows)


@pytest.mark.parametrize("mode", ["allow", "auto"])  # auto: allowed for an ingested corpus
def test_labeled_audio_inside_the_unlabeled_pool_passes_when_allowed(tmp_path: Path, mode: str) -> None:
    corpus = build_corpus(tmp_path)
    labeled_copied_into_unlabeled(corpus)
    report = validate_corpus(corpus, VALIDATE_CFG.model_copy(update={"labeled_in_unlabeled": mode}), progress=False)
    assert report["passed"], summary_markdown(report)


def test_one_test_leak_is_listed_beside_a_flood_of_labeled_in_unlabeled_rows(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path)
    labeled_copied_into_unlabeled(corpus)
    shutil.copyfile(audio_of(corpus, "test-clean", "t-000"), audio_of(corpus, "labeled", "l-001"))

    allowed = validate_corpus(corpus, VALIDATE_CFG.model_copy(update={"labeled_in_unlabeled": "allow"}), progress=False)
    assert allowed["failed_rules"] == ["no_duplicate_audio_across_parts"]  # audio shared with a test set fails
    assert {(r["part"], r["id"]) for r in allowed["rules"]["no_duplicate_audio_across_parts"]["rows"]} == {
        ("labeled", "l-001"), ("unlabeled", "l-001"), ("test-clean", "t-000")}

    cfg = VALIDATE_CFG.model_copy(update={"labeled_in_unlabeled": "forbid", "report_rows": 1})
    forbidden = validate_corpus(corpus, cfg, progress=False)
    assert forbidden["failed_rules"] == ["unique_id", "no_duplicate_audio_across_parts"]
    summary = summary_markdown(forbidden, max_rows=1)
    section = summary.split("## no_duplicate_audio_across_parts")[1]
    # the leak into the test set is counted first, not hidden behind the flood
    assert "By pair of parts: test-clean & unlabeled: 2; labeled & test-clean: 2; labeled & unlabeled: 6" in section


def test_missing_manifest_fails_parts_rule_naming_the_manifest(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path)
    corpus.manifest_path("test-clean").unlink()
    report = validate(corpus)
    assert report["failed_rules"] == ["parts_not_empty"]
    assert report["rules"]["parts_not_empty"]["rows"][0]["file"] == str(corpus.manifest_path("test-clean"))


def test_unparsable_manifest_line_is_a_schema_failure_with_its_line(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path)
    with open(corpus.manifest_path("labeled"), "a", encoding="utf-8") as f:
        f.write("{not json\n")
    report = validate(corpus)
    assert not report["passed"]
    assert [(r["part"], r["line"]) for r in report["rules"]["schema"]["rows"]] == [("labeled", 4)]


def test_summary_lists_first_rows_and_counts_the_rest(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path, n_unlabeled=4)
    for i in range(4):
        edit_row(corpus, "unlabeled", f"u-{i:03d}", sample_rate=8000)
    report = validate(corpus)
    summary = summary_markdown(report, max_rows=2)
    assert report["rules"]["sample_rate"]["count"] == 4
    assert "u-000" in summary and "u-001" in summary and "u-002" not in summary
    assert "... and 2 more rows in report.json" in summary


def test_validation_never_touches_the_audio(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path)
    silent(corpus)
    before = {p: p.read_bytes() for p in corpus.root.rglob("*") if p.is_file()}
    validate(corpus)
    assert {p: p.read_bytes() for p in corpus.root.rglob("*") if p.is_file()} == before


def test_clean_librispeech_layout_passes_end_to_end(tmp_path: Path) -> None:
    root = build_librispeech(tmp_path / "LibriSpeech", {"train-clean-100": 2, "train-other-500": 2,
                                                        "test-clean": 1, "test-other": 1})
    cfg = {"path": str(root), "unlabeled": ["train-other-500"], "labeled": ["train-clean-100"],
           "tests": {"clean": "test-clean", "other": "test-other"}, "held_out_speakers": "tests"}
    corpus = ingest("librispeech", cfg, tmp_path / "corpus")
    report = validate(Corpus.load(tmp_path / "corpus"))
    assert report["passed"], summary_markdown(report)
    assert report["parts"] == {"unlabeled": 4, "labeled": 4, "test-clean": 2, "test-other": 2}
    assert corpus.held_out_speakers  # the leakage rule had speakers to check


def test_report_files_are_written_and_machine_readable(tmp_path: Path) -> None:
    corpus = build_corpus(tmp_path)
    missing_file(corpus)
    report = validate(corpus)
    summary = write_report(report, tmp_path / "validation", max_rows=5)
    saved = json.loads((tmp_path / "validation" / "report.json").read_text())
    assert saved["passed"] is False and saved["rules"]["file_exists"]["count"] == 1
    assert saved["rules"]["file_exists"]["rows"][0] == {
        "part": "labeled", "line": 2, "id": "l-001", "file": str(audio_of(corpus, "labeled", "l-001")),
        "values": {"exists": False}}
    assert (tmp_path / "validation" / "summary.md").read_text() == summary


def run_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run stages/validate.py as `dvc repro` would (as __main__, in the workspace); return its exit code.
    In-process, so that the test does not pay for importing Great Expectations again."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "validate": VALIDATE_CFG.model_dump()}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["stages/validate.py"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "stages" / "validate.py"), run_name="__main__")
    return done.value.code


def test_stage_exits_nonzero_and_prints_summary_on_a_bad_corpus(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    stereo(build_corpus(tmp_path, corpus_dir="data/corpus"))
    assert run_stage(tmp_path, monkeypatch) == EXIT_KNOWN  # a failed gate: not retried
    assert "## mono: 1 offending rows" in capsys.readouterr().out
    assert json.loads((tmp_path / "data/validation/report.json").read_text())["failed_rules"] == ["mono"]
    assert "**FAIL**" in (tmp_path / "data/validation/summary.md").read_text()


def test_stage_exits_zero_on_a_clean_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_corpus(tmp_path, corpus_dir="data/corpus")
    assert run_stage(tmp_path, monkeypatch) == 0
    assert json.loads((tmp_path / "data/validation/report.json").read_text())["passed"] is True


def test_probe_reports_rate_channels_and_level_from_the_decoded_audio(tmp_path: Path) -> None:
    from labelbudget.validation import probe_file

    path = write_audio(tmp_path / "x.flac", np.clip(tone(seed=1, seconds=0.5, channels=2) * 10, -1, 1))
    got = probe_file(str(path))
    assert (got["file_sample_rate"], got["channels"], got["frames"]) == (SR, 2, SR // 2)
    assert got["clipped_fraction"] > 0.5 and got["rms_db"] > -10
