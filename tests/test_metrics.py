"""WER/CER per test set, weighted over test sets and bootstrap intervals, checked against hand counts."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest
import torch
from defaults import section

from labelbudget import metrics as M
from labelbudget.decoders.greedy import GreedyDecoder
from labelbudget.decoding import collapse, make_decoder
from labelbudget.errors import ParamsError

REFS_A = ["The CAT, sat!", "on the mat"]
HYPS_A = ["the cat sit", "on mat"]  # 1 substitution + 1 deletion of 6 words
REFS_B = ["a b c d"]
HYPS_B = ["a b c d e f"]  # 2 insertions of 4 words


def test_corpus_wer_and_cer_match_a_hand_count_after_normalisation():
    s = M.corpus_scores(REFS_A, HYPS_A)
    assert s["word_errors"] == 2 and s["words"] == 6
    assert s["wer"] == pytest.approx(2 / 6)
    # chars incl. spaces: "the cat sat" -> "the cat sit" 1 sub of 11; "on the mat" -> "on mat" 4 deletions
    assert (s["char_errors"], s["chars"]) == (5, 21)
    assert s["cer"] == pytest.approx(5 / 21)


def test_corpus_rates_equal_jiwer_corpus_level_on_normalised_text():
    refs = ["hello world again", "one two", "the quick brown fox"]
    hyps = ["hello word", "one two three", "a quick brown box jumps"]
    s = M.corpus_scores(refs, hyps)
    assert s["wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert s["cer"] == pytest.approx(jiwer.cer(refs, hyps))


def test_empty_reference_adds_insertions_and_no_reference_words():
    counts = M.utterance_counts(["", "a b"], ["x y", "a b"])
    assert counts[0] == M.Counts(word_errors=2, words=0, char_errors=3, chars=0)
    s = M.corpus_scores(["", "a b"], ["x y", "a b"])
    assert s["wer"] == pytest.approx(1.0)  # 2 insertions / 2 reference words, not jiwer's 2.0 per empty ref
    assert s["cer"] == pytest.approx(1.0)


def test_all_empty_references_raise_instead_of_returning_jiwers_2():
    with pytest.raises(M.MetricsError, match="empty"):
        M.corpus_scores(["", "?!"], ["a", ""])


def test_weighted_wer_with_word_count_weights_is_the_pooled_wer():
    a, b = M.corpus_scores(REFS_A, HYPS_A), M.corpus_scores(REFS_B, HYPS_B)
    assert b["wer"] == pytest.approx(0.5)
    w = M.resolve_weights("words", {"A": a["words"], "B": b["words"]})
    assert w == pytest.approx({"A": 0.6, "B": 0.4})
    got = M.weighted({"A": a["wer"], "B": b["wer"]}, w)
    assert got == pytest.approx(0.6 * 2 / 6 + 0.4 * 0.5)
    assert got == pytest.approx((2 + 2) / (6 + 4))


def test_weighted_wer_with_explicit_weights_normalises_them():
    w = M.resolve_weights({"A": 3, "B": 1}, {"A": 6, "B": 4})
    assert w == pytest.approx({"A": 0.75, "B": 0.25})
    assert M.weighted({"A": 2 / 6, "B": 0.5}, w) == pytest.approx(0.375)


def test_equal_weights_average_the_test_sets():
    w = M.resolve_weights("equal", {"A": 6, "B": 4})
    assert M.weighted({"A": 0.2, "B": 0.6}, w) == pytest.approx(0.4)


@pytest.mark.parametrize("spec, message", [
    ({"A": 1, "B": 1, "C": 1}, "do not exist: \\['C'\\]"),
    ({"A": 1}, "without a weight: \\['B'\\]"),
    ({"A": -1, "B": 1}, "non-negative"),
    ("words_please", "unknown scheme"),
])
def test_weights_that_do_not_match_the_test_sets_are_rejected_by_name(spec, message):
    with pytest.raises(M.MetricsError, match=message):
        M.check_weights(spec, ["A", "B"])


def test_bootstrap_interval_contains_the_point_estimate():
    rng = np.random.default_rng(0)
    totals = rng.integers(3, 15, size=80)
    errors = rng.binomial(totals, 0.3)
    point = errors.sum() / totals.sum()
    lo, hi = M.bootstrap_ci(errors, totals, n_boot=500, seed=1)
    assert lo < point < hi
    assert hi - lo < 0.2


def test_score_run_gives_per_test_and_weighted_rates_with_intervals():
    rows = []
    for t, refs, hyps in (("A", REFS_A, HYPS_A), ("B", REFS_B, HYPS_B)):
        for r, h, c in zip(refs, hyps, M.utterance_counts(refs, hyps), strict=True):
            rows.append({"test_set": t, "ref": r, "hyp": h, **c.as_dict()})
    s = M.score_run(rows, "words", n_boot=200)
    assert s["tests"]["A"]["wer"] == pytest.approx(2 / 6)
    assert s["weighted"]["wer"] == pytest.approx(0.4)
    assert s["weights_source"] == "reference word counts"
    lo, hi = s["weighted"]["wer_ci"]
    assert lo <= s["weighted"]["wer"] <= hi


def test_greedy_decoder_collapses_repeats_and_drops_blanks():
    assert collapse([0, 3, 3, 0, 3, 1, 1, 0]) == [3, 3, 1]
    # vocab: 0 blank, 1 space, 2 apostrophe, 3 'a', 4 'b'
    frames = [3, 3, 0, 4, 1, 1, 4, 0, 0]
    log_probs = torch.nn.functional.one_hot(torch.tensor([frames + [4, 4]]), 29).float().log_softmax(-1)
    text = GreedyDecoder().decode(log_probs, lengths=torch.tensor([len(frames)]))  # the padding is ignored
    assert text == ["ab b"]
    assert isinstance(make_decoder(section("evaluate").decoder), GreedyDecoder)
    with pytest.raises(ParamsError, match=r"evaluate.decoder: name 'beam' is not a module of labelbudget/decoders"):
        section("evaluate", decoder={"name": "beam"})

