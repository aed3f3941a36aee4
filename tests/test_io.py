"""Outputs are written atomically, and what a killed process left half-written is cleaned up."""

from __future__ import annotations

from pathlib import Path

import pytest

from labelbudget.io import atomic_dir, atomic_path


def test_a_killed_writers_temporary_folders_are_removed_by_the_next_write(tmp_path: Path) -> None:
    stale_dir = tmp_path / ".corpus.x1y2.tmp"  # as `kill -9` during the corpus stage leaves it
    (stale_dir / "manifests").mkdir(parents=True)
    stale_file = tmp_path / ".model.pt.k3.tmp"
    stale_file.write_bytes(b"half a checkpoint")
    other = tmp_path / ".features.z9.tmp"  # another output's temporary: not ours to remove
    other.mkdir()

    with atomic_dir(tmp_path / "corpus") as tmp:
        (tmp / "corpus.json").write_text("{}")
    with atomic_path(tmp_path / "model.pt") as tmp:
        tmp.write_bytes(b"weights")

    assert sorted(p.name for p in tmp_path.iterdir()) == [".features.z9.tmp", "corpus", "model.pt"]


def test_a_failed_write_leaves_the_previous_output_untouched(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "corpus.json").write_text("previous")
    with pytest.raises(OSError), atomic_dir(tmp_path / "corpus") as tmp:
        (tmp / "corpus.json").write_text("new")
        raise OSError(28, "No space left on device")
    assert (tmp_path / "corpus" / "corpus.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]
