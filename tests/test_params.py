"""The typed params: one frozen object read by attribute, whose reads the params audit records by dotted key."""

from __future__ import annotations

import pytest
from defaults import params
from pydantic import ValidationError

from labelbudget.schema import record_reads


def test_params_are_frozen_and_typed():
    p = params()
    assert isinstance(p.subsets.budgets_min[0], int)  # a budget of 1 stays the int that names stages and files
    with pytest.raises(ValidationError, match="frozen"):
        p.pretrain.lr = 1.0


def test_reads_are_recorded_by_their_dotted_keys():
    p = params()
    seen: set[str] = set()
    record_reads(seen)
    try:
        assert p.pretrain.lr > 0 and p.validation.sample_rate == 16000
        assert p.upstreams["random"].size == "large" and "small" in p.models
        p.models["large"].model_dump()
        list(p.toplines)
    finally:
        record_reads(None)
    assert seen == {"pretrain.lr", "validate.sample_rate", "upstreams.random.size", "models.large", "toplines"}
    p.seed  # noqa: B018 - nothing is recorded once the audit is off
    assert "seed" not in seen


def test_a_section_that_is_not_part_of_the_params_records_nothing():
    from labelbudget.schema import Finetune

    checkpoint_config = Finetune.model_validate(params().finetune.model_dump())  # as a checkpoint restores it
    seen: set[str] = set()
    record_reads(seen)
    try:
        assert checkpoint_config.hidden > 0
    finally:
        record_reads(None)
    assert seen == set()
