"""Params as the project composes them from conf/ (typed), for tests that need a section or a whole `Params`:
one place holds each default, so a test never restates one."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

from labelbudget.profiles import compose, deep_merge
from labelbudget.schema import Params, parse_params

REPO = Path(__file__).resolve().parent.parent


@cache
def _composed(profile: str) -> dict:
    return compose(REPO, profile)


def raw(profile: str = "smoke", replace: dict | None = None, **sections: Any) -> dict:
    """The composed params as a plain mapping: `sections` deep-merged in (e.g. pretrain={"max_steps": 3}),
    then the top-level keys of `replace` set whole (e.g. upstreams={...} keeps only those)."""
    return {**deep_merge(copy.deepcopy(_composed(profile)), sections), **(replace or {})}


def params(profile: str = "smoke", replace: dict | None = None, **sections: Any) -> Params:
    """The composed params, typed and checked (see `raw`)."""
    return parse_params(raw(profile, replace, **sections))


def own_tests(*names: str) -> dict:
    """A `corpus` section for a hand-made corpus whose test sets have these names (an ingested corpus)."""
    corpus = _composed("smoke")["corpus"]
    return {**corpus, "source": "manifest", "ingest": {**corpus["ingest"], "path": ".", "tests": {n: n for n in names}}}


def section(name: str, profile: str = "smoke", **overrides: Any) -> Any:
    """One section of the composed params (`finetune`, `validate`...), with `overrides` checked."""
    attr = next(n for n, f in Params.model_fields.items() if (f.alias or n) == name)
    return getattr(params(profile, **{name: overrides}), attr)


def ingest(source: str, cfg: dict, out: Path) -> Any:
    """`labelbudget.sources.ingest` with the `corpus.ingest` section given as a mapping over conf's (unchecked:
    the tests hand it what the library itself must refuse)."""
    from labelbudget.schema import Ingest
    from labelbudget.sources import ingest as ingest_typed

    return ingest_typed(source, Ingest.model_construct(**{**_composed("smoke")["corpus"]["ingest"], **cfg}), out)


# Every pretraining recipe option at its off value: a test turns on the one it checks.
PLAIN_RECIPE = {"objective": "bestrq", "kmeans_layer": None, "reconstruction_weight": 0.0, "clean_targets": False,
                "input_corruption": 0.0, "head_layers": 0, "unmasked_weight": 0.0, "infonce_weight": 0.0,
                "frontend_lr_scale": 1.0, "transformer_lr_scale": 1.0}


def plain_pretrain(**overrides: Any) -> Any:
    """The `pretrain` section with every recipe option off (PLAIN_RECIPE), then `overrides`."""
    return section("pretrain", **{**PLAIN_RECIPE, **overrides})
