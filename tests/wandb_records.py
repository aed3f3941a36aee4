"""Read an offline W&B run file (`run-<id>.wandb`) back with W&B's own record format: a LevelDB-style log of
`wandb_internal_pb2.Record` protobufs (32 KiB blocks, 7-byte chunk headers) after a 7-byte `:W&B` header.
W&B 0.31 ships no Python reader of it, so tests use this one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    out, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:
            pos += left
            continue
        pending += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def _items(items) -> dict[str, Any]:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def run_contents(path: str | Path) -> dict[str, Any]:
    """{"config": {...}, "history": [{...}, ...], "summary": {...}} of one offline run file."""
    config: dict[str, Any] = {}
    history, summary = [], {}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "config":
            config.update(_items(rec.config.update))
        elif kind == "run":
            config.update(_items(rec.run.config.update))
        elif kind == "history":
            history.append(_items(rec.history.item))
        elif kind == "summary":
            summary.update(_items(rec.summary.update))
    return {"config": config, "history": history, "summary": summary}


def offline_runs(root: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """(run directory, contents) of every offline run under `root/wandb`."""
    return [(f.parent, run_contents(f)) for f in sorted(Path(root).glob("wandb/offline-run-*/run-*.wandb"))]
