"""Shared fixtures. Corpus builders live in corpora.py (plain functions, importable by any test module)."""

from __future__ import annotations

import pytest
from corpora import build_corpus

from labelbudget.manifest import Corpus


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Corpus:
    """A small synthesized corpus, which carries phone alignments: about 70 s unlabeled, 110 s labeled, two
    test sets of 6 utterances."""
    from labelbudget.corpus import synthesize
    from labelbudget.schema import Synth

    return synthesize(Synth(unlabeled_hours=0.02, labeled_hours=0.03, test_utterances=6,
                            test_sets=["in_domain", "noisy"], shard_size=8, workers=2),
                      0, tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory) -> Corpus:
    """Enough 1-3 s utterances to pretrain and extract on: 24 unlabeled, 24 labeled, two test sets of 6."""
    return build_corpus(tmp_path_factory.mktemp("speech"), n_unlabeled=24, n_labeled=24, n_test=6,
                        tests=("clean", "noisy"), seconds=(1.0, 3.0))
