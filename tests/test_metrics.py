"""Caption metrics against values computed by hand and against pycocoevalcap."""

from __future__ import annotations

import math

import pytest

from mmtune.evaluation.metrics import bleu, bleu_scores, caption_exact_match, cider_d, rouge_l, tokenize_caption


def test_tokenize_caption_drops_punctuation_and_case():
    assert tokenize_caption("Top left: Red circle; it's  there.") == ["top", "left", "red", "circle", "it's", "there"]


def test_bleu_clipped_precisions():
    # p1 = 5/6 (second "the" clipped), p2 = 3/5, p3 = 2/4, p4 = 1/3, equal lengths -> no penalty
    value = bleu(["the cat sat on the mat"], [["the cat sat on a mat"]])
    assert value == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, rel=1e-9)


def test_bleu_brevity_penalty():
    # all precisions 1; hypothesis 4 words, reference 6 -> exp(1 - 6/4)
    assert bleu(["the cat sat on"], [["the cat sat on a mat"]]) == pytest.approx(math.exp(-0.5), rel=1e-9)


def test_bleu_uses_closest_reference_length():
    # lengths 7 and 2 around a 4-word hypothesis: the closest (2) is shorter, so no penalty at all
    assert bleu(["the cat sat on"], [["the cat sat on a red mat", "a cat"]]) == pytest.approx(1.0)


def test_bleu_is_corpus_level():
    # n-gram counts are summed over the corpus before the ratio (not an average of sentence scores)
    hyps, refs = ["a b c d", "a b c d e"], [["a b c d"], ["a b c d x"]]
    p = [(4 + 4) / (4 + 5), (3 + 3) / (3 + 4), (2 + 2) / (2 + 3), (1 + 1) / (1 + 2)]
    assert bleu(hyps, refs) == pytest.approx(math.prod(p) ** 0.25, rel=1e-9)


def test_bleu_zero_when_no_four_gram_matches():
    assert bleu(["red circle"], [["red circle"]]) < 1e-3


def test_cider_d_identical_short_captions():
    # idf = log 2 for every n-gram; n = 1, 2 match fully, n = 3, 4 have no n-grams -> 10 * 2/4
    value = cider_d(["red circle", "blue square"], [["red circle"], ["blue square"]])
    assert value == pytest.approx(5.0, rel=1e-9)


def test_cider_d_shared_words_have_no_weight():
    # "a" occurs in both images' references: idf 0. Image 1 scores 10 * 3/4; image 2 ("a blue circle"
    # for "a blue square") matches half the unigram and bigram weight and no trigram: 10 * (0.5 + 0.5) / 4
    value = cider_d(["a red circle", "a blue circle"], [["a red circle"], ["a blue square"]])
    assert value == pytest.approx((7.5 + 2.5) / 2, rel=1e-9)


def test_cider_d_length_penalty():
    # hypothesis one bigram shorter than the reference: unigram cosine 1, bigram 1/sqrt(2),
    # times exp(-1 / (2 * 6^2)); the second image only sets the document count to 2
    value = cider_d(["red circle", "x"], [["a red circle"], ["a b"]])
    first = 10 * (1 + 2 ** -0.5) / 4 * math.exp(-1 / 72)
    assert value == pytest.approx((first + 0.0) / 2, rel=1e-9)


def test_cider_d_averages_over_references():
    # same image data, the second reference shares nothing: the image's score halves
    one = cider_d(["red circle", "blue square"], [["red circle"], ["blue square"]])
    two = cider_d(["red circle", "blue square"], [["red circle", "green"], ["blue square"]])
    assert two == pytest.approx(one * 3 / 4, rel=1e-9)


def test_metric_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference"):
        cider_d(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="1 hypotheses but 2 reference"):
        bleu(["a"], [["a"], ["b"]])


def test_caption_exact_match_ignores_case_and_punctuation():
    hyps = ["Top left: red circle.", "a blue square"]
    refs = [["top left: red circle.", "a red circle in the top left."], ["a blue circle"]]
    assert caption_exact_match(hyps, refs) == 0.5


CAPTIONS = [
    ("A red circle in the top left.", ["a red circle at the top left", "red circle, top left corner",
                                       "the top left holds a red circle"]),
    ("two blue squares", ["Two blue squares side by side.", "a pair of blue squares"]),
    ("a green triangle", ["a small green triangle", "green triangle in the middle", "a triangle"]),
    ("nothing here", ["an empty picture", "a plain white background"]),
    ("a yellow star and a red circle", ["a red circle next to a yellow star", "yellow star, red circle"]),
]


def test_caption_metrics_equal_pycocoevalcap():
    """BLEU-1..4, ROUGE-L and CIDEr-D against pycocoevalcap on the same tokenised captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    hyps, refs = [h for h, _ in CAPTIONS], [r for _, r in CAPTIONS]
    res = {i: [" ".join(tokenize_caption(h))] for i, h in enumerate(hyps)}
    gts = {i: [" ".join(tokenize_caption(r)) for r in rs] for i, rs in enumerate(refs)}
    theirs_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert bleu_scores(hyps, refs) == pytest.approx(theirs_bleu, rel=1e-9)
    assert rouge_l(hyps, refs) == pytest.approx(Rouge().compute_score(gts, res)[0], rel=1e-9)
    assert cider_d(hyps, refs) == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-9)
