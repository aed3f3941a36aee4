"""Checks of the features a run reads, before any training: parts present, ids covered, layers compatible."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from labelbudget.downstream.config import DownstreamInputError
from labelbudget.featstore import FeatureStore, FeatureStoreError

LABELED_PART = "labeled"


def layer_index(store: FeatureStore, layer: str | int) -> int | None:
    """Position of the chosen layer in the features (None: weighted sum over all of them)."""
    if layer == "weighted":
        return None
    kept = list(store.meta["layers"])
    if layer not in kept:
        raise DownstreamInputError(f"finetune.layer {layer} is not in the features at {store.dir} "
                                   f"(kept: {kept})")
    return kept.index(layer)


def open_part(features_root: str | Path, part: str) -> FeatureStore:
    try:
        return FeatureStore(Path(features_root) / part)
    except FeatureStoreError as e:
        raise DownstreamInputError(str(e)) from None


def check_ids(store: FeatureStore, ids: Sequence[str], what: str) -> None:
    """Every utterance of `what` must have features; names the first few that do not."""
    if not ids:
        raise DownstreamInputError(f"{what}: no utterances")
    missing = [i for i in ids if i not in store]
    if missing:
        raise DownstreamInputError(
            f"{what}: {len(missing)} of {len(ids)} utterances have no features in {store.dir} "
            f"(e.g. {missing[:3]}); re-run the `extract` stage for this upstream")


def check_compatible(ref: FeatureStore, other: FeatureStore) -> None:
    for key in ("layers", "dim", "frame_rate"):
        if ref.meta.get(key) != other.meta.get(key):
            raise DownstreamInputError(f"features disagree on {key!r}: {ref.dir} has {ref.meta.get(key)!r}, "
                                       f"{other.dir} has {other.meta.get(key)!r}; re-run the `extract` stage")
