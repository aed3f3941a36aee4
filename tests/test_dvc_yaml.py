"""dvc.yaml is complete: every module a stage's code can import is one of its deps, and every stage names the
paths it reads and writes on its command line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
# Modules that only accept or refuse inputs (and word the refusal): they cannot change what a stage writes, so
# tightening a check must not re-run the experiment.
CHECKS_ONLY = {Path("labelbudget/errors.py"),
               *(f.relative_to(REPO) for f in (REPO / "labelbudget" / "schema").glob("*.py")),
               # where a stage's process comes from (a fresh interpreter or the fork server), not what it does:
               # the same script runs either way (tests/test_forkserver.py)
               Path("labelbudget/forkserver.py")}


def project_imports(path: Path) -> set[str]:
    """`labelbudget` modules imported anywhere in a file, function bodies included (heavy imports are lazy)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("labelbudget")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("labelbudget"):
            names.add(node.module)
            # `from labelbudget import tracking` imports a module too
            names |= {f"{node.module}.{a.name}" for a in node.names
                      if module_file(f"{node.module}.{a.name}") is not None}
    return names


def module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def code_closure(script: Path) -> set[Path]:
    """The stage script and every project file it can reach through imports."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in project_imports(f):
            parts = name.split(".")
            # a package's __init__ runs for every module imported from it
            for k in range(1, len(parts) + 1):
                mf = module_file(".".join(parts[:k]))
                if mf is not None:
                    todo.append(mf)
    return {f.relative_to(REPO) for f in seen}


def stage_def(stage: dict) -> dict:
    return stage.get("do", stage)


@pytest.mark.parametrize("name", list(STAGES))
def test_every_module_a_stage_imports_is_a_dependency(name):
    stage = stage_def(STAGES[name])
    script = REPO / stage["cmd"].split()[1]
    deps = [Path(d) for d in stage["deps"] if "${" not in d]
    covered = lambda f: any(f == d or d in f.parents for d in deps)  # noqa: E731
    missing = sorted(str(f) for f in code_closure(script) - CHECKS_ONLY if not covered(f) and f.name != "__init__.py"
                     or f.name == "__init__.py" and not covered(f) and f.parent != Path("labelbudget"))
    assert not missing, f"stage {name}: add to its deps in dvc.yaml: {missing}"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_output_path_is_passed_on_the_command_line(name):
    stage = stage_def(STAGES[name])
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
    tokens = stage["cmd"].split()
    for out in outs:
        assert any(out == t or out.startswith(t + "/") for t in tokens), \
            f"stage {name}: output {out} is not under a path on its command line: {stage['cmd']}"
