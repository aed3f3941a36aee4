"""Every ordinary mistake gets one clear line, a non-zero exit, and changes nothing: params.yaml and the previous
outputs stay as they were. One case per row of the README's Troubleshooting table (a test checks they match).

Command-line cases run `labelbudget` in a copy of the project; stage cases run a stage script as `dvc repro`
would (in the workspace, as __main__). What the flow adds on top (a known error is not retried, the failed
stage's last good outputs come back from the DVC cache, SIGTERM stops the run) is tested in test_flows.py.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from corpora import build_corpus, tone, write_audio

from labelbudget.cli import main
from labelbudget.errors import EXIT_KNOWN

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Case:
    id: str
    message: str  # a regex the one error line must match
    cli: list[str] = field(default_factory=list)  # `labelbudget ...` arguments
    stage: list[str] = field(default_factory=list)  # or a stage script and its arguments
    setup: Callable[[Path], None] | None = None  # edits the workspace first (params, data)
    prelude: str = ""  # Python run in the stage's process before its script (fault injection)
    report: tuple[str, ...] = ()  # what the failure writes on purpose (a failed gate's report)


def set_params(**changes: object) -> Callable[[Path], None]:
    """Edit params.yaml directly, as a user would (dotted keys)."""

    def edit(root: Path) -> None:
        params = yaml.safe_load((root / "params.yaml").read_text())
        for key, value in changes.items():
            *path, last = key.split("__")
            node = params
            for k in path:
                node = node[k]
            node[last] = value
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    return edit


def write(relpath: str, text: str) -> Callable[[Path], None]:
    return lambda root: ((root / relpath).parent.mkdir(parents=True, exist_ok=True),
                         (root / relpath).write_text(text))[-1]


def chain(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def run(root: Path) -> None:
        for step in steps:
            step(root)

    return run


def ingest(source: str, **cfg: object) -> Callable[[Path], None]:
    base = {"path": "mine", "unlabeled": ["pool.csv"], "labeled": ["train.csv"], "tests": {"t": "test.csv"},
            "held_out_speakers": []}
    return set_params(corpus__source=source, corpus__ingest={**base, **cfg})


def my_corpus(root: Path, train_rows: str = "wavs/a.wav,hello\n") -> None:
    write_audio(root / "mine" / "wavs" / "a.wav", tone(seed=1, seconds=0.5), fmt="WAV")
    for name, rows in (("pool.csv", "wavs/a.wav,\n"), ("train.csv", train_rows), ("test.csv", "wavs/a.wav,hi\n")):
        (root / "mine" / name).write_text("audio,text\n" + rows)


def a_corpus(root: Path) -> None:
    build_corpus(root, corpus_dir="data/corpus")


def corrupt_audio(root: Path) -> None:
    a_corpus(root)
    (root / "audio" / "labeled" / "l-001.flac").write_bytes(b"not audio at all")


def a_clip(root: Path) -> None:
    write_audio(root / "clip.flac", tone(0))


def a_checkpoint(payload: bytes | dict) -> Callable[[Path], None]:
    """A clip to transcribe and, in place of the finetune's model.pt, bytes or a torch-saved object."""
    def setup(root: Path) -> None:
        import torch

        a_clip(root)
        path = root / "models" / "finetune" / "large-2-0" / "model.pt"
        path.write_bytes(payload) if isinstance(payload, bytes) else torch.save(payload, path)

    return setup


def full_disk(root: Path) -> None:
    a_corpus(root)
    (root / "data" / "subsets").mkdir(parents=True)
    (root / "data" / "subsets" / "summary.json").write_text("{}")  # the previous output


# Run before the stage script in its process: every JSON write fails as on a full disk.
DISK_FULL = """
import errno, labelbudget.io
def no_space(path, obj):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))
labelbudget.io.write_json = no_space
"""


CASES = [
    # params, through --set: checked before params.yaml is written or anything runs
    Case("wrong-type", r"finetune\.lr = 'abc': input should be a valid number", ["run", "--set", "finetune.lr=abc"]),
    Case("unknown-size", r"ssl_sizes: 'huge' has no shape in `models`", ["run", "--set", "ssl_sizes=[huge]"]),
    Case("negative-budget", r"subsets\.budgets_min\.0 = -5: input should be greater than 0",
         ["run", "--set", "subsets.budgets_min=[-5,0]"]),
    Case("zero-seeds", r"subsets\.seeds = \[\]: list should have at least 1 item",
         ["run", "--set", "subsets.seeds=[]"]),
    Case("duplicate-seed", r"subsets\.seeds = \[0, 0\]: listed twice: 0", ["run", "--set", "subsets.seeds=[0,0]"]),
    Case("misspelt-key", r"Could not override 'finetune\.lrr'", ["run", "--set", "finetune.lrr=1"]),
    Case("added-unknown-key", r"finetune\.lrr: unknown key; allowed here: layer, dim",
         ["run", "--set", "+finetune.lrr=1"]),
    Case("unknown-choice", r"pretrain\.objective = 'wav2vec': not a module of labelbudget/objectives \(bestrq, hubert,",
         ["run", "--set", "pretrain.objective=wav2vec"]),
    Case("heads-do-not-divide", r"models\.large: dim 320 must be a multiple of heads 3",
         ["run", "--set", "models.large.heads=3"]),
    Case("kmeans-layer-too-deep", r"pretrain\.kmeans_layer 9: size 'small' has layers 0-\d+",
         ["run", "--set", "pretrain.kmeans_layer=9"]),
    Case("unknown-upstream-kind", r"upstreams\.small: kind 'nope' is not a module of labelbudget/upstreams",
         ["run", "--set", "upstreams.small.kind=nope"]),
    Case("dropped-size-still-compared", r"report\.larger 'large' is not an upstream .*report\.larger=null",
         ["run", "--set", "ssl_sizes=[small]", "--set", "~upstreams.large"]),
    Case("weights-for-unknown-test-set", r"evaluate\.weights names test sets that do not exist: \['moon'\]",
         ["run", "--set", "evaluate.weights={moon: 1}"]),
    Case("ingest-without-path", r"source 'librispeech' needs corpus\.ingest\.path",
         ["run", "--set", "corpus.source=librispeech"]),
    Case("unknown-profile", r"unknown profile 'nosuch'; available: calibration, default, gpu, paper, smoke",
         ["run", "--profile", "nosuch"]),
    # (this workspace holds no code, so the code files other upstreams name are listed too)
    Case("upstream-source-missing", r"upstreams\.fbank\.source 'nowhere/fbank\.py'.*: not found under .* no stage "
         "writes it", ["run", "--set", "upstreams.fbank.source=nowhere/fbank.py"]),
    Case("sizes-of-unknown-profile", r"unknown profile 'nosuch'", ["sizes", "--profile", "nosuch"]),
    # command-line options, refused by the parser before anything is read
    Case("zero-concurrency", r"argument --concurrency: 0 is out of range: at least 1", ["run", "--concurrency", "0"]),
    Case("negative-retry-delay", r"argument --retry-delay: -1 is out of range: at least 0",
         ["run", "--retry-delay", "-1"]),
    # transcribe: inputs and checkpoints are checked before anything heavy runs
    Case("transcribe-manifest-not-json", r"mine\.jsonl: line 2 is not JSON",
         ["transcribe", "models/finetune/large-2-0", "--manifest", "mine.jsonl"],
         setup=write("mine.jsonl", '{"id": "a", "audio": "clip.flac"}\nid,audio\n')),
    Case("transcribe-undecodable-audio", r"clip\.wav: cannot decode audio",
         ["transcribe", "models/finetune/large-2-0", "clip.wav"], setup=write("clip.wav", "not audio")),
    Case("transcribe-damaged-checkpoint", r"model\.pt: damaged or not a labelbudget checkpoint",
         ["transcribe", "models/finetune/large-2-0", "clip.flac"], setup=a_checkpoint(b"PK\x03\x04truncated")),
    Case("transcribe-foreign-checkpoint", r"model\.pt: not a finetune checkpoint of labelbudget \(no 'config'\)",
         ["transcribe", "models/finetune/large-2-0", "clip.flac"],
         setup=a_checkpoint({"format": 1, "encoder": {}})),
    # params.yaml edited by hand, then a plain run
    Case("edited-params-wrong-type", r"params\.yaml: finetune\.batch_size = 'many': input should be a valid "
         "integer", ["run"], setup=set_params(finetune__batch_size="many")),
    Case("edited-params-not-yaml", r"params\.yaml: not valid YAML", ["run"],
         setup=write("params.yaml", "finetune: {lr: [\n")),
    # stages, as `dvc repro` runs them
    Case("stage-bad-params", r"params\.yaml: extract\.layers = \[\]: must be 'all' or a non-empty list",
         stage=["stages/subsets.py"], setup=set_params(extract__layers=[])),
    Case("corpus-root-missing", r"no/such/LibriSpeech: corpus root not found \(params corpus\.ingest\.path\)",
         stage=["stages/corpus.py"], setup=ingest("librispeech", path="/no/such/LibriSpeech")),
    Case("empty-part", r"part 'labeled' is empty", stage=["stages/corpus.py"],
         setup=chain(lambda r: my_corpus(r, train_rows=""), ingest("manifest"))),
    Case("audio-outside-root", r"part 'labeled': 1 audio path\(s\) leave the corpus root",
         stage=["stages/corpus.py"],
         setup=chain(lambda r: my_corpus(r, train_rows="../../etc/passwd,hi\n"), ingest("manifest"))),
    Case("no-corpus-yet", r"data/corpus/corpus\.json: no corpus description; run the `corpus` stage first",
         stage=["stages/subsets.py"]),
    Case("budget-larger-than-pool", r"budget 100000 min exceeds the labeled pool", stage=["stages/subsets.py"],
         setup=chain(a_corpus, set_params(subsets__budgets_min=[100000], subsets__dev_minutes=0.01))),
    Case("unreadable-audio", r"validation FAILED: 1 of \d+ rules; see data/validation/summary\.md",
         stage=["stages/validate.py"], setup=corrupt_audio,
         report=("data/validation/report.json", "data/validation/summary.md")),
    Case("missing-features", r"upstream 'fbank': no features at data/features/fbank; run `extract@fbank`",
         stage=["stages/finetune.py", "fbank", "2", "0"], setup=a_corpus),
    Case("disk-full", r"No space left on device writing .*summary\.json", stage=["stages/subsets.py"],
         setup=chain(full_disk, set_params(subsets__budgets_min=[0.01], subsets__dev_minutes=0.01)),
         prelude=DISK_FULL),
]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    shutil.copytree(REPO / "conf", root / "conf")
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / f, root / f)
    (root / ".dvc" / "tmp").mkdir(parents=True)
    (root / "models" / "finetune" / "large-2-0").mkdir(parents=True)
    (root / "models" / "finetune" / "large-2-0" / "train.json").write_text("{}")  # a previous output
    monkeypatch.chdir(root)
    return root


def snapshot(root: Path) -> dict[str, str]:
    skip = (".dvc/tmp/",)  # the error log
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not str(p.relative_to(root)).startswith(skip)}


def run_case(case: Case, root: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """(exit code, stderr). The CLI in-process; a stage in its own process, as `dvc repro` runs it."""
    if case.cli:
        import labelbudget.orchestrate.flows as flows

        def started(**kwargs):
            raise AssertionError("the pipeline started on bad input")

        monkeypatch.setattr(flows, "experiment", started)
        try:
            return main(case.cli), ""
        except SystemExit as e:  # the option parser's refusal
            return e.code, ""
    script = str(REPO / case.stage[0])
    code = f"{case.prelude}\nimport runpy, sys\nsys.argv = {[script, *case.stage[1:]]!r}\n" \
           f"runpy.run_path({script!r}, run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_gives_one_clear_line_and_changes_nothing(case: Case, workspace: Path, capsys,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if case.setup:
        case.setup(workspace)
    before = snapshot(workspace)

    code, err = run_case(case, workspace, monkeypatch)

    err += capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == (2 if case.cli else EXIT_KNOWN), err
    assert len(errors) == 1, err
    assert re.search(case.message, errors[0]), errors[0]
    assert "Traceback" not in err
    after = {k: v for k, v in snapshot(workspace).items() if k not in case.report}
    assert after == before  # params.yaml, data and the previous outputs untouched


def test_the_readme_troubleshooting_table_has_a_tested_row_for_every_case() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.MULTILINE)
    # the cases tests/test_flows.py covers
    flow_rows = {"retried-crash", "known-error-in-a-run", "sigterm", "second-run-at-once", "half-written-dvc-lock"}
    assert set(rows) == {c.id for c in CASES} | flow_rows
    assert len(rows) >= 20
