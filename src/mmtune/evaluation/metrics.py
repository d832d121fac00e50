"""Caption and VQA metrics: BLEU-4, CIDEr-D, exact match, VQAv2 accuracy with its answer normalisation.

BLEU-4 and CIDEr-D follow the MS-COCO caption evaluation code (pycocoevalcap): corpus-level BLEU
with the "closest reference length" brevity penalty, and CIDEr-D with document frequencies taken from
the references, clipped tf-idf vectors, a Gaussian length penalty (sigma 6) and the factor 10. They
are written here because pycocoevalcap's tokenizer needs Java; captions are tokenised by
:func:`tokenize_caption` (lower case, words only, punctuation dropped), as its PTB tokenizer does.
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

def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` of ``hypotheses[i]`` against the references ``references[i]``.

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
    log_precision = sum(math.log((c + tiny) / (g + small)) for c, g in zip(correct, guess)) / max_n
    brevity = min(0.0, 1.0 - (ref_len + small) / (hyp_len + tiny))
    return math.exp(log_precision + brevity)


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


# ------------------------------------------------------------------ VQA

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd", "itll": "it'll",
    "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "shant": "shan't", "shed": "she'd", "shes": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "thats": "that's", "thered": "there'd",
    "theres": "there's", "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "wasnt": "wasn't", "weve": "we've", "werent": "weren't", "whats": "what's",
    "whered": "where'd", "wheres": "where's", "whod": "who'd", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "yall": "y'all", "youd": "you'd", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
          "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _strip_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def normalize_vqa_answer(answer: str) -> str:
    """The VQAv2 evaluation's answer normalisation.

    Punctuation is removed (or turned into a space), periods not inside numbers dropped; words are
    lower-cased, number words become digits, articles go, and contractions get their apostrophe.
    """
    text = _strip_punctuation(answer.replace("\n", " ").replace("\t", " ").strip().lower())
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_soft_accuracy(answer: str, human_answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one answer: min(#humans that gave it / 3, 1), after normalisation."""
    given = normalize_vqa_answer(answer)
    return min(sum(normalize_vqa_answer(h) == given for h in human_answers) / 3.0, 1.0)


def vqa_exact_match(answer: str, human_answers: Sequence[str]) -> float:
    """1.0 when the normalised answer equals the most common normalised human answer, else 0.0."""
    if not human_answers:
        return 0.0
    normalized = Counter(normalize_vqa_answer(h) for h in human_answers)
    return float(normalize_vqa_answer(answer) == normalized.most_common(1)[0][0])
