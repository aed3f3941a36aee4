"""Reading the DAG that `dvc.yaml` declares: its stages, their order, and which of them need running.

DVC stays the single source of truth: the graph comes from `dvc.repo.Repo(root).index.graph` and "needs
running" from `stage.changed()`, the check `dvc repro` itself makes. A stage needs running when it changed or
when anything upstream of it runs (its inputs may change); the rest are skipped without calling `dvc` at all,
which keeps a run where everything is up to date close to the cost of one `dvc status`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from labelbudget import dvcapi


@dataclass(frozen=True)
class Stage:
    name: str  # what `dvc repro -s` takes when run from the project root, e.g. "finetune@small-60-0"
    group: str  # the stage's name in dvc.yaml before matrix/foreach expansion, e.g. "finetune"
    upstream: tuple[str, ...]  # stages whose outputs it depends on
    outs: tuple[str, ...]  # output paths, relative to the project root
    changed: bool  # DVC says its command, deps, params or outs changed


@dataclass
class Dag:
    root: Path
    stages: dict[str, Stage]  # in topological order (upstream first; ties in dvc.yaml order)
    needs_run: set[str] = field(default_factory=set)

    @property
    def order(self) -> list[str]:
        return list(self.stages)

    def to_run(self) -> list[str]:
        return [name for name in self.stages if name in self.needs_run]

    def up_to_date(self) -> list[str]:
        return [name for name in self.stages if name not in self.needs_run]

    def downstream(self, name: str) -> list[str]:
        """Every stage that depends on `name`, directly or not, in topological order."""
        found = {name}
        for stage in self.stages.values():
            if any(up in found for up in stage.upstream):
                found.add(stage.name)
        return [n for n in self.stages if n in found and n != name]

    def select(self, targets: Iterable[str]) -> Dag:
        """The sub-DAG `dvc repro <targets>` would consider: the targets and everything upstream of them.

        A target is a stage name or a group name (`finetune` selects every `finetune@...`)."""
        targets = list(targets)
        wanted = {n for n, s in self.stages.items() if n in targets or s.group in targets}
        unknown = [t for t in targets if not any(t in (n, self.stages[n].group) for n in wanted)]
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(self.stages)}")
        for name in reversed(self.order):
            if name in wanted:
                wanted.update(self.stages[name].upstream)
        stages = {n: s for n, s in self.stages.items() if n in wanted}
        return Dag(self.root, stages, {n for n in self.needs_run if n in wanted})


def _address(stage, root: Path) -> str:
    relpath = os.path.relpath(stage.path, root)
    if dvcapi.is_pipeline_stage(stage):
        return stage.name if relpath == "dvc.yaml" else f"{relpath}:{stage.name}"
    return relpath  # a .dvc file


def load_dag(root: str | Path) -> Dag:
    """Read the DAG of the DVC project at `root` and decide which stages need running."""
    import networkx as nx

    root = Path(root).resolve()
    repo = dvcapi.open_repo(root)
    try:
        # `changed()` reads DVC's state database: it must hold the repo lock, as `dvc repro` does.
        with dvcapi.repo_lock(repo):
            # Edges point from a stage to the stages it depends on; frozen stages are cut off from their
            # upstream, exactly as `dvc repro` does.
            graph = dvcapi.active_graph(repo).reverse(copy=True)
            position = {stage: i for i, stage in enumerate(repo.index.stages)}
            ordered = list(nx.lexicographical_topological_sort(graph, key=lambda s: position.get(s, 0)))
            names = {stage: _address(stage, root) for stage in ordered}
            stages: dict[str, Stage] = {}
            for stage in ordered:
                upstream = list(graph.predecessors(stage))
                name = names[stage]
                stages[name] = Stage(
                    name=name,
                    group=name.split("@", 1)[0],
                    upstream=tuple(names[s] for s in upstream),
                    outs=tuple(os.path.relpath(out.fs_path, root) for out in stage.outs),
                    changed=stage.changed(upstream=upstream),
                )
    finally:
        repo.close()

    needs_run: set[str] = set()
    for stage in stages.values():
        if stage.changed or any(up in needs_run for up in stage.upstream):
            needs_run.add(stage.name)
    return Dag(root, stages, needs_run)


def sort_lock(root: str | Path, order: list[str]) -> None:
    """Rewrite dvc.lock with its stages in DAG order, in DVC's own formatting. Concurrent `dvc repro -s` calls
    append entries in the order they finish, and the flow's DVC writes the lock in C (`dvcapi.fast_lockfile_writes`,
    the same values, other quoting); a fixed order and DVC's round trip keep diffs of dvc.lock readable and the
    bytes what DVC writes. The file is replaced atomically, and only when that changes it."""
    from labelbudget.io import atomic_path

    lock = Path(root) / "dvc.lock"
    if not lock.exists():
        return
    rank = {name: i for i, name in enumerate(order)}
    text = lock.read_text()
    data = dvcapi.parse_yaml_for_update(text, str(lock))
    entries = data.get("stages") or {}
    items = [(n, entries[n]) for n in sorted(entries, key=lambda n: (rank.get(n, len(rank)), n))]
    for n, _ in items:
        del entries[n]
    for n, value in items:
        entries[n] = value
    rewritten = dvcapi.dumps_yaml(data)
    if rewritten == text:
        return
    with atomic_path(lock) as tmp:  # DVC's own dump writes in place: a kill midway would break dvc.lock
        tmp.write_text(rewritten)
