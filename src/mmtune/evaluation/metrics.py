"""Caption metrics: BLEU-1..4, ROUGE-L, CIDEr-D, exact match (answer scoring is in :mod:`.scoring`).

BLEU, ROUGE-L and CIDEr-D follow the MS-COCO caption evaluation code (pycocoevalcap): corpus-level BLEU
with the "closest reference length" brevity penalty, and CIDEr-D with document frequencies taken from
the references, clipped tf-idf vectors, a Gaussian length penalty (sigma 6) and the factor 10. They
are written here because pycocoevalcap's tokenizer needs Java; captions are tokenised by
:func:`tokenize_caption` (lower case, words only, punctuation dropped), as its PTB tokenizer does.
``tests/test_metrics.py`` checks every value against pycocoevalcap on the same tokenised captions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

Ngrams = Counter


def tokenize_caption(text: str) -> list[str]:
    """Lower-cased words (letters, digits, inner apostrophes); punctuation is dropped."""
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower())


def _ngrams(words: Sequence[str], n: int) -> Ngrams:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


# ------------------------------------------------------------------ BLEU

def bleu_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1 .. BLEU-``max_n`` of ``hypotheses[i]`` against the references ``references[i]``.

    Clipped n-gram counts and lengths are summed over the corpus; the brevity penalty uses, for each
    hypothesis, the reference length closest to it (the shorter on a tie), as coco-caption does.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    correct, guess = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        h = tokenize_caption(hyp)
        rs = [tokenize_caption(r) for r in refs]
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1] if rs else 0
        for n in range(1, max_n + 1):
            counts = _ngrams(h, n)
            max_ref: Counter = Counter()
            for r in rs:
                max_ref |= _ngrams(r, n)
            correct[n - 1] += sum(min(c, max_ref[g]) for g, c in counts.items())
            guess[n - 1] += max(len(h) - n + 1, 0)
    tiny, small = 1e-15, 1e-9
    brevity = min(0.0, 1.0 - (ref_len + small) / (hyp_len + tiny))
    logs = [math.log((c + tiny) / (g + small)) for c, g in zip(correct, guess)]
    return [math.exp(sum(logs[:n]) / n + brevity) for n in range(1, max_n + 1)]


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` (:func:`bleu_scores`' last value)."""
    return bleu_scores(hypotheses, references, max_n)[-1]


# ------------------------------------------------------------------ ROUGE-L

def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """Mean over images of ROUGE-L: the F-measure (``beta`` 1.2) of the best longest-common-subsequence
    precision and the best recall over an image's references, as coco-caption computes it."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        return 0.0
    scores = []
    for hyp, refs in zip(hypotheses, references):
        h = tokenize_caption(hyp)
        lcs = [(_lcs(h, r), len(r)) for r in map(tokenize_caption, refs)]
        precision = max((n / len(h) if h else 0.0 for n, _ in lcs), default=0.0)
        recall = max((n / length if length else 0.0 for n, length in lcs), default=0.0)
        if precision and recall:
            scores.append((1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision))
        else:
            scores.append(0.0)
    return sum(scores) / len(scores)


# ------------------------------------------------------------------ CIDEr-D

def _tfidf(words: Sequence[str], df: Counter, log_n_docs: float, max_n: int) -> tuple[list[dict], list[float]]:
    vecs, norms = [], []
    for n in range(1, max_n + 1):
        vec = {g: tf * (log_n_docs - math.log(max(1.0, df[g]))) for g, tf in _ngrams(words, n).items()}
        vecs.append(vec)
        norms.append(math.sqrt(sum(v * v for v in vec.values())))
    return vecs, norms


def _length(words: Sequence[str]) -> int:
    # coco-caption's CIDEr-D counts bigrams as the length (its "n == 1" is the 0-based n-gram index)
    return max(len(words) - 1, 0)


def _cider_sim(hyp: tuple[list[dict], list[float], int], ref: tuple[list[dict], list[float], int],
               sigma: float) -> float:
    (hv, hn, hl), (rv, rn, rl) = hyp, ref
    total = 0.0
    for n in range(len(hv)):
        val = sum(min(v, rv[n].get(g, 0.0)) * rv[n].get(g, 0.0) for g, v in hv[n].items())
        if hn[n] != 0 and rn[n] != 0:
            val /= hn[n] * rn[n]
        total += val * math.exp(-((hl - rl) ** 2) / (2 * sigma ** 2))
    return total / len(hv)


def cider_d(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4,
            sigma: float = 6.0) -> float:
    """Corpus CIDEr-D (mean over images of 10 x the mean similarity to each reference).

    Document frequencies count, for each n-gram, the images whose references contain it; the idf is
    ``log(#images) - log(max(1, df))``.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        return 0.0
    refs_tok = [[tokenize_caption(r) for r in refs] for refs in references]
    df: Counter = Counter()
    for refs in refs_tok:
        df.update({g for r in refs for n in range(1, max_n + 1) for g in _ngrams(r, n)})
    log_n = math.log(float(len(hypotheses)))
    scores = []
    for hyp, refs in zip(hypotheses, refs_tok):
        h = tokenize_caption(hyp)
        hv = (*_tfidf(h, df, log_n, max_n), _length(h))
        sims = [_cider_sim(hv, (*_tfidf(r, df, log_n, max_n), _length(r)), sigma) for r in refs]
        scores.append(10.0 * sum(sims) / len(sims) if sims else 0.0)
    return sum(scores) / len(scores)


def caption_exact_match(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Share of hypotheses equal (after :func:`tokenize_caption`) to one of their references."""
    if not hypotheses:
        return 0.0
    hits = sum(tokenize_caption(h) in [tokenize_caption(r) for r in refs] for h, refs in zip(hypotheses, references))
    return hits / len(hypotheses)
