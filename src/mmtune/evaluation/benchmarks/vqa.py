"""Open-answer benchmarks in their release layouts: VQAv2, TextVQA and GQA.

* VQAv2: the questions JSON (``{"data_subtype": "val2014", "questions": [{"image_id", "question",
  "question_id"}]}``), optionally the annotations JSON (``{"annotations": [{"question_id",
  "answer_type", "answers": [{"answer"}, ...]}]}``, 10 human answers each); images
  ``COCO_<subtype>_<image_id:012d>.jpg`` (test-dev questions use the test2015 images).
* TextVQA: ``TextVQA_0.5.1_val.json`` (``{"data": [{"question_id", "question", "image_id",
  "answers"}]}``); images ``<image_id>.jpg`` (the release's train_images folder holds val too).
* GQA: the balanced questions JSON (``{question_id: {"imageId", "question", "answer", "types"}}``);
  images ``<imageId>.jpg``.
"""

from __future__ import annotations

from typing import Optional

from mmtune.errors import DataError
from mmtune.evaluation.benchmarks.common import BenchFiles, ask, get, image_path, read_json, top
from mmtune.evaluation.runner import EvalItem


def _vqav2_answers(path: Optional[str]) -> Optional[dict]:
    """question_id -> (human answers, answer type) from the annotations file, or None without one."""
    if path is None:
        return None
    out = {}
    for n, ann in enumerate(top(read_json(path), "annotations", path, "the VQAv2 annotations layout")):
        where = f"annotations[{n}]"
        answers = [get(a, "answer", path, f"{where}.answers") for a in get(ann, "answers", path, where)]
        out[get(ann, "question_id", path, where)] = (answers, ann.get("answer_type", ""))
    return out


def read_vqav2(files: BenchFiles, prompt: str) -> list[EvalItem]:
    """VQAv2 questions (with their human answers when ``files.annotations`` is given)."""
    path = files.only_data("vqav2")
    data = read_json(path)
    questions = top(data, "questions", path, "the VQAv2 questions layout")
    subtype = str(data.get("data_subtype", "val2014"))
    folder = "test2015" if subtype.startswith("test") else subtype
    answers = _vqav2_answers(files.annotations)
    root, items = files.root(), []
    for n, q in enumerate(questions):
        where = f"questions[{n}]"
        qid, image_id = get(q, "question_id", path, where), get(q, "image_id", path, where)
        image = image_path(root, f"COCO_{folder}_{int(image_id):012d}.jpg", path, f"question {qid}")
        refs, kind = ([], "")
        if answers is not None:
            if qid not in answers:
                raise DataError(f"{files.annotations}: no annotation for question_id {qid}")
            refs, kind = answers[qid]
        record = ask(get(q, "question", path, where), prompt, str(image), str(qid))
        items.append(EvalItem(record, list(refs), kind=kind, ident={"question_id": qid}))
    return items


def read_textvqa(files: BenchFiles, prompt: str) -> list[EvalItem]:
    """TextVQA questions and their 10 human answers (none in the test file)."""
    path = files.only_data("textvqa")
    entries = top(read_json(path), "data", path, "the TextVQA_0.5.1 layout")
    root, items = files.root(), []
    for n, q in enumerate(entries):
        where = f"data[{n}]"
        qid = get(q, "question_id", path, where)
        image = image_path(root, f"{get(q, 'image_id', path, where)}.jpg", path, f"question {qid}")
        record = ask(get(q, "question", path, where), prompt, str(image), str(qid))
        items.append(EvalItem(record, list(q.get("answers") or []), ident={"question_id": qid}))
    return items


def read_gqa(files: BenchFiles, prompt: str) -> list[EvalItem]:
    """GQA balanced questions with their gold answer and structural type."""
    path = files.only_data("gqa")
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DataError(f"{path}: expected the GQA questions layout (a JSON object of question_id -> question)")
    root, items = files.root(), []
    for qid, q in data.items():
        where = f"question {qid}"
        image = image_path(root, f"{get(q, 'imageId', path, where)}.jpg", path, where)
        record = ask(get(q, "question", path, where), prompt, str(image), str(qid))
        answer = q.get("answer")
        kind = (q.get("types") or {}).get("structural", "")
        items.append(EvalItem(record, [answer] if isinstance(answer, str) else [], kind=kind,
                              ident={"question_id": qid}))
    return items
