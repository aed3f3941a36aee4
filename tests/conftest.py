"""Shared fixtures. Corpus builders live in corpora.py (plain functions, importable by any test module)."""

from __future__ import annotations

import pytest
from corpora import build_corpus

from labelbudget.manifest import Corpus


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory) -> Corpus:
    """Enough 1-3 s utterances to pretrain and extract on: 24 unlabeled, 24 labeled, two test sets of 6."""
    return build_corpus(tmp_path_factory.mktemp("speech"), n_unlabeled=24, n_labeled=24, n_test=6,
                        tests=("clean", "noisy"), seconds=(1.0, 3.0))
