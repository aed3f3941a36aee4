"""A throwaway DVC project with the experiment's DAG shape, for the flow tests and the overhead benchmark.

corpus -> validate -> subsets -> finetune@model-budget -> evaluate@model-budget -> report, each stage a call
of one stdlib-only script that sleeps a little, writes deterministic outputs and appends its start and end
time to `timeline.jsonl` (so tests can check order and overlap). Knobs, none of them seen by DVC:
- `TOY_SLEEP`: seconds a finetune stage takes (default 0.3; the others take a tenth of it);
- a file `.fail-once/<stage label>` (e.g. `evaluate-a-1`) gets that stage killed once (SIGKILL, as the OOM
  killer would: a failure a retry can fix), then disappears; `.fail-always/<label>` makes it exit with a
  known error (exit 3) every time; `.break-lock-once/<label>` cuts dvc.lock short, then kills the stage once;
- param `validate.fail: true` makes the validation stage fail, as a data gate would.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

STEP = r"""
import json, os, signal, sys, time
from pathlib import Path

kind, args = sys.argv[1], sys.argv[2:]
label = "-".join([kind, *args]) if kind in ("finetune", "evaluate") else kind
start = time.time()
with open("attempts.log", "a") as f:  # the pid: a test checks this very process is gone after a stop
    f.write(f"{label} {os.getpid()}\n")
marker = Path(".fail-once") / label
if marker.exists():
    marker.unlink()
    os.kill(os.getpid(), signal.SIGKILL)
marker = Path(".break-lock-once") / label
if marker.exists():  # dvc.lock as a kill during DVC's in-place write of it leaves it, then killed itself
    marker.unlink()
    text = Path("dvc.lock").read_text()
    Path("dvc.lock").write_text(text[: len(text) // 2] + "\n[")
    os.kill(os.getpid(), signal.SIGKILL)
if (Path(".fail-always") / label).exists():
    print(f"error: {label}: failing, as asked", file=sys.stderr)
    sys.exit(3)
time.sleep(float(os.environ.get("TOY_SLEEP", "0.3")) * (1 if kind == "finetune" else 0.1))


def write(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if kind == "corpus":
    write("data/corpus/utts.txt", "".join(f"utt{i}\n" for i in range(100)))
elif kind == "validate":
    ok = args[0].lower() != "true"
    write("data/validation/report.json", json.dumps({"success": ok}))
    write("data/validation/summary.md", "all rules passed\n" if ok else "rule `duration`: 3 rows fail\n")
    if not ok:
        print("error: validation failed: see data/validation/summary.md", file=sys.stderr)
        sys.exit(3)
elif kind == "subsets":
    for budget in args[1:]:  # `--budgets_min 1 2`; one file each: a new budget leaves the others as they were
        write(f"data/subsets/{budget}.txt", "".join(f"utt{i}\n" for i in range(int(budget) * 10)))
elif kind == "finetune":
    model, budget = args
    write(f"models/{model}-{budget}/model.txt", f"{model} trained on {budget}\n")
elif kind == "evaluate":
    model, budget = args
    wer = round(1.0 / (int(budget) + (2 if model == "a" else 1)), 4)
    write(f"results/{model}-{budget}/metrics.json", json.dumps({"wer": wer}))
elif kind == "report":
    files = sorted(Path("results").glob("*/metrics.json"))
    metrics = {p.parent.name: json.loads(p.read_text()) for p in files}
    write("reports/metrics.json", json.dumps(metrics, indent=1))
    write("reports/results.md", "".join(f"- {k}: {v['wer']}\n" for k, v in metrics.items()))

with open(os.environ.get("TOY_TIMELINE", "timeline.jsonl"), "a") as f:
    f.write(json.dumps({"stage": label, "start": start, "end": time.time()}) + "\n")
"""

DVC_YAML = """\
stages:
  corpus:
    cmd: python step.py corpus
    deps:
      - step.py
    outs:
      - data/corpus
  validate:
    cmd: python step.py validate ${validate.fail}
    deps:
      - step.py
      - data/corpus
    outs:
      - data/validation/report.json:
          cache: false
      - data/validation/summary.md:
          cache: false
  subsets:
    cmd: python step.py subsets ${subsets}
    deps:
      - step.py
      - data/corpus
      - data/validation/report.json
    params:
      - subsets
    outs:
      - data/subsets
  finetune:
    matrix:
      model: ${ssl_sizes}
      budget: ${subsets.budgets_min}
    cmd: python step.py finetune ${item.model} ${item.budget}
    deps:
      - step.py
      - data/subsets/${item.budget}.txt
    outs:
      - models/${item.model}-${item.budget}
  evaluate:
    matrix:
      model: ${ssl_sizes}
      budget: ${subsets.budgets_min}
    cmd: python step.py evaluate ${item.model} ${item.budget}
    deps:
      - step.py
      - models/${item.model}-${item.budget}
    outs:
      - results/${item.model}-${item.budget}
  report:
    cmd: python step.py report
    deps:
      - step.py
      - results
    params:
      - ssl_sizes
      - subsets
    outs:
      - reports/results.md:
          cache: false
    metrics:
      - reports/metrics.json:
          cache: false
"""


def write_params(
    root: Path, models: Sequence[str], budgets: Sequence[int], fail_validation: bool = False
) -> None:
    import yaml

    params = {
        # the experiment's keys, so that `sweep` and overrides work on the toy too
        "profile": "default",
        "ssl_sizes": list(models),
        "subsets": {"budgets_min": list(budgets)},  # unpacked by DVC into `--budgets_min 1 2`
        "validate": {"fail": fail_validation},
    }
    # conf/ as in the project (a base and one profile), params.yaml its composition
    (root / "conf" / "profile").mkdir(parents=True, exist_ok=True)
    base = {"defaults": ["_self_", {"profile": "default"}], **params}
    (root / "conf" / "config.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    (root / "conf" / "profile" / "default.yaml").write_text("# @package _global_\nprofile: default\n")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def create_toy_project(
    root: str | Path, models: Sequence[str] = ("a", "b"), budgets: Sequence[int] = (1, 2)
) -> Path:
    """Create a git + DVC project at `root` (which may exist but should be empty) and return its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "step.py").write_text(STEP.lstrip())
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / ".gitignore").write_text("timeline.jsonl\nattempts.log\n.fail-once/\n.fail-always/\n.break-lock-once/\n")
    # DVC appends each output to a .gitignore beside it in the order stages finish; a directory dep holding
    # outputs of several stages (`results`) would hash differently with every finishing order.
    (root / ".dvcignore").write_text(".gitignore\n")
    write_params(root, models, budgets)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=root, check=True)
    subprocess.run([*dvc, "config", "core.analytics", "false"], cwd=root, check=True)
    return root
