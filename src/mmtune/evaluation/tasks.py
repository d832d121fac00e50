"""The standard benchmarks: how each is read, prompted, answered and scored.

A :class:`Benchmark` pairs a reader (:mod:`mmtune.evaluation.benchmarks`) with LLaVA-1.5's prompt for
it and its official scoring (:mod:`mmtune.evaluation.scoring`, :mod:`mmtune.evaluation.metrics`).
Scores are fractions in [0, 1] (LLaVA's tables print them x 100); CIDEr-D is unscaled (x 100 in
papers). A benchmark whose files carry no answers (VQAv2 test-dev, MMBench test) is answered but not
scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from mmtune.errors import DataError
from mmtune.evaluation.benchmarks.choice import read_mmbench, read_scienceqa
from mmtune.evaluation.benchmarks.coco import read_coco_captions
from mmtune.evaluation.benchmarks.common import BenchFiles, get, read_json, top
from mmtune.evaluation.benchmarks.pope import read_pope
from mmtune.evaluation.benchmarks.vqa import read_gqa, read_textvqa, read_vqav2
from mmtune.evaluation.metrics import bleu_scores, cider_d, rouge_l
from mmtune.evaluation.runner import EvalItem, Predictor
from mmtune.evaluation.scoring import (
    accuracy_by,
    choice_letter,
    circular_scores,
    gqa_match,
    normalize_vqa_answer,
    pope_scores,
    vqa_accuracy,
)
from mmtune.evaluation.spread import predict_spread

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
CAPTION = "Provide a one-sentence caption for the provided image."


def _mean(values: Sequence[float]) -> float:
    return sum(values) / max(len(values), 1)


def score_vqa_accuracy(items: Sequence[EvalItem]) -> dict[str, Any]:
    """VQA accuracy overall and per answer type (VQAv2's yes/no, number, other)."""
    values = [vqa_accuracy(i.prediction, i.references) for i in items]
    out: dict[str, Any] = {"accuracy": _mean(values), "count": len(items)}
    if any(i.kind for i in items):
        groups: dict[str, list[float]] = {}
        for item, value in zip(items, values):
            groups.setdefault(item.kind, []).append(value)
        out["by_answer_type"] = {k: _mean(v) for k, v in sorted(groups.items())}
    return out


def score_gqa(items: Sequence[EvalItem]) -> dict[str, Any]:
    """Exact match overall and per structural type."""
    hits = [(i.kind, bool(gqa_match(i.prediction, i.references[0]))) for i in items]
    return {"accuracy": _mean([ok for _, ok in hits]), "count": len(items), "by_type": accuracy_by(hits)}


def score_pope(items: Sequence[EvalItem]) -> dict[str, Any]:
    """POPE's five numbers per split, and their mean over splits."""
    splits = sorted({i.kind for i in items})
    per = {s: pope_scores([i.prediction for i in items if i.kind == s],
                          [i.references[0] for i in items if i.kind == s]) for s in splits}
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    return {**{k: _mean([per[s][k] for s in splits]) for k in keys}, "count": len(items), "by_split": per}


def _correct_choice(item: EvalItem) -> bool:
    return choice_letter(item.prediction, item.meta["options"]) == item.references[0]


def score_mmbench(items: Sequence[EvalItem]) -> dict[str, Any]:
    """Circular accuracy (every rotation right), per category."""
    ordered = sorted(items, key=lambda i: (str(i.ident["index"]), i.ident["round"]))
    return circular_scores([(str(i.ident["index"]), i.kind, _correct_choice(i)) for i in ordered])


def score_scienceqa(items: Sequence[EvalItem]) -> dict[str, Any]:
    """Accuracy on the image questions, per subject."""
    hits = [(i.kind, _correct_choice(i)) for i in items]
    return {"accuracy": _mean([ok for _, ok in hits]), "count": len(items), "by_subject": accuracy_by(hits)}


def score_coco(items: Sequence[EvalItem]) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of the captions."""
    hyps, refs = [i.prediction for i in items], [i.references for i in items]
    scores: dict[str, Any] = {f"bleu{n}": v for n, v in enumerate(bleu_scores(hyps, refs), 1)}
    return {**scores, "rouge_l": rouge_l(hyps, refs), "cider": cider_d(hyps, refs), "count": len(items)}


def vqav2_submission(items: Sequence[EvalItem]) -> list[dict]:
    """The VQAv2 evaluation server's results file: question_id and the normalised answer."""
    return [{"question_id": i.ident["question_id"], "answer": normalize_vqa_answer(i.prediction)} for i in items]


def fill_submission(rows: list[dict], questions: str) -> list[dict]:
    """``rows`` plus an empty answer for every question of the questions file ``questions`` that
    ``rows`` does not answer (the server wants all test2015 questions, even for test-dev)."""
    answered = {row["question_id"] for row in rows}
    every = top(read_json(questions), "questions", questions, "the VQAv2 questions layout")
    missing = [get(q, "question_id", questions, f"questions[{n}]") for n, q in enumerate(every)]
    return rows + [{"question_id": qid, "answer": ""} for qid in missing if qid not in answered]


@dataclass(frozen=True)
class Benchmark:
    """One standard benchmark."""

    name: str
    read: Callable[[BenchFiles, str], list[EvalItem]]
    score: Callable[[Sequence[EvalItem]], dict[str, Any]]
    prompt: str
    """LLaVA-1.5's instruction after the question (the whole request for captions)."""
    max_new_tokens: int = 16
    submission: Optional[Callable[[Sequence[EvalItem]], list[dict]]] = None
    """The results file of an evaluation server, for files without answers."""


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("vqav2", read_vqav2, score_vqa_accuracy, SHORT_ANSWER, submission=vqav2_submission),
    Benchmark("textvqa", read_textvqa, score_vqa_accuracy, SHORT_ANSWER),
    Benchmark("gqa", read_gqa, score_gqa, SHORT_ANSWER),
    Benchmark("pope", read_pope, score_pope, SHORT_ANSWER),
    Benchmark("mmbench", read_mmbench, score_mmbench, OPTION_LETTER),
    Benchmark("scienceqa", read_scienceqa, score_scienceqa, OPTION_LETTER),
    Benchmark("coco-caption", read_coco_captions, score_coco, CAPTION, max_new_tokens=64),
)}


def scored(items: Sequence[EvalItem]) -> bool:
    """Whether every item has an answer to score against."""
    return bool(items) and all(i.references for i in items)


def prediction_lines(items: Sequence[EvalItem]) -> list[dict]:
    """One JSON object per item: its id fields and the model's raw answer."""
    return [{**i.ident, "answer": i.prediction} for i in items]


def first_questions(items: Sequence[EvalItem], limit: Optional[int]) -> list[EvalItem]:
    """The items of the first ``limit`` questions (by the first id field: every rotation of an MMBench
    question, the first ``limit`` questions of each POPE split)."""
    if limit is None:
        return list(items)
    kept: dict = {}
    for item in items:
        key = next(iter(item.ident.values()))
        if key in kept or len(kept) < limit:
            kept.setdefault(key, True)
    return [i for i in items if next(iter(i.ident.values())) in kept]


def evaluate_benchmark(predictor: Predictor, name: str, files: BenchFiles, *, prompt: Optional[str] = None,
                       batch_size: int = 32, limit: Optional[int] = None) -> tuple[dict[str, Any], list[EvalItem]]:
    """Reads, answers (spread over the ranks) and scores one benchmark: the result (task, prompt,
    counts, ``metrics`` when the files hold answers) and the answered items."""
    bench = BENCHMARKS[name]
    used = bench.prompt if prompt is None else prompt
    items = first_questions(bench.read(files, used), limit)
    if not items:
        raise DataError(f"{files.data[0]}: no {name} questions found")
    predict_spread(predictor, items, batch_size, desc=name)
    result: dict[str, Any] = {"task": name, "prompt": used, "template": predictor.template,
                              "count": len(items), "data": files.data}
    if scored(items):
        result["metrics"] = bench.score(items)
    return result, items
