"""Answer scoring of the standard benchmarks, as their official evaluations do it.

* VQA accuracy (VQAv2, TextVQA): answers are normalised as the VQA evaluation code does (punctuation,
  periods outside numbers, number words -> digits, articles, contractions); an answer's accuracy is
  ``min(#matching humans / 3, 1)`` averaged over the 10 subsets of 9 humans that leave one out.
* GQA: exact match after lower-casing and dropping a final period (LLaVA's conversion for the official
  GQA evaluation).
* POPE: an answer is "no" when its first sentence has the word "no", "No" or "not", else "yes";
  accuracy, precision, recall, F1 (positive = yes) and the share of yes answers.
* Multiple choice (MMBench, ScienceQA): the option letter an answer picks; MMBench's circular
  evaluation counts a question right only when every rotation of its options is answered right.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Optional, Sequence

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
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the official pattern, its look-behind typo included
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
    """The VQA evaluation's answer normalisation.

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


def vqa_accuracy(answer: str, human_answers: Sequence[str]) -> float:
    """The VQA accuracy of one answer: for each human left out, ``min(#other humans who gave the
    answer / 3, 1)``, averaged over the humans (all after :func:`normalize_vqa_answer`)."""
    if not human_answers:
        return 0.0
    given = normalize_vqa_answer(answer)
    matches = [normalize_vqa_answer(h) == given for h in human_answers]
    total = sum(matches)
    return sum(min((total - m) / 3.0, 1.0) for m in matches) / len(matches)


def vqa_exact_match(answer: str, human_answers: Sequence[str]) -> float:
    """1.0 when the normalised answer equals the most common normalised human answer, else 0.0."""
    if not human_answers:
        return 0.0
    normalized = Counter(normalize_vqa_answer(h) for h in human_answers)
    return float(normalize_vqa_answer(answer) == normalized.most_common(1)[0][0])


def normalize_gqa_answer(answer: str) -> str:
    """Lower case, surrounding blanks and a final period removed."""
    return answer.strip().rstrip(".").strip().lower()


def gqa_match(answer: str, gold: str) -> float:
    """1.0 when the normalised answer equals the normalised gold answer."""
    return float(normalize_gqa_answer(answer) == normalize_gqa_answer(gold))


# ------------------------------------------------------------------ POPE

def pope_answer(answer: str) -> str:
    """"yes" or "no": "no" when the answer's first sentence has the word no, No or not."""
    words = answer.split(".")[0].replace(",", "").split()
    return "no" if {"no", "No", "not"} & set(words) else "yes"


def pope_scores(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive: yes) and yes-ratio of raw answers against labels."""
    predicted = [pope_answer(a) == "yes" for a in answers]
    gold = [label.strip().lower() == "yes" for label in labels]
    tp = sum(p and g for p, g in zip(predicted, gold))
    fp = sum(p and not g for p, g in zip(predicted, gold))
    fn = sum(g and not p for p, g in zip(predicted, gold))
    tn = len(gold) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    count = max(len(gold), 1)
    return {"accuracy": (tp + tn) / count, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(predicted) / count, "count": len(gold)}


# ------------------------------------------------------------------ multiple choice

def choice_letter(answer: str, options: Sequence[str]) -> Optional[str]:
    """The option letter (A, B, ...) an answer picks, or None.

    "B", "B.", "(B) text", "B: text" and "The answer is B." pick B; an answer equal to one option's
    text (case and a final period ignored) picks that option."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    text = answer.strip()
    stated = re.search(r"answer is \(?([A-Z])\b", text)
    if stated and stated.group(1) in letters:
        return stated.group(1)
    lead = re.match(r"^\(?([A-Z])(?:$|[).:,\s])", text)
    if lead and lead.group(1) in letters:
        return lead.group(1)
    plain = text.rstrip(".").strip().lower()
    for letter, option in zip(letters, options):
        if plain == option.strip().rstrip(".").strip().lower():
            return letter
    return None


def accuracy_by(flags: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """Share of True per group, for (group, correct) pairs, groups sorted."""
    groups: dict[str, list[bool]] = {}
    for group, ok in flags:
        groups.setdefault(group, []).append(ok)
    return {g: sum(v) / len(v) for g, v in sorted(groups.items())}


def circular_scores(rounds: Sequence[tuple[str, str, bool]]) -> dict:
    """MMBench circular evaluation of (question index, category, correct) triples, one per rotation:
    a question counts when all its rotations are right. Overall and per-category accuracy, plus the
    plain accuracy of the first rotations."""
    by_question: dict[str, list[bool]] = {}
    category: dict[str, str] = {}
    for index, cat, ok in rounds:
        by_question.setdefault(index, []).append(ok)
        category[index] = cat
    passed = {index: all(oks) for index, oks in by_question.items()}
    first = {index: oks[0] for index, oks in by_question.items()}
    count = max(len(passed), 1)
    return {"accuracy": sum(passed.values()) / count, "single_pass_accuracy": sum(first.values()) / count,
            "by_category": accuracy_by((category[i], ok) for i, ok in passed.items()), "count": len(passed)}
