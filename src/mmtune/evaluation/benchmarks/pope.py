"""POPE in its release layout: one question file per split (``coco_pope_random.json``,
``..._popular.json``, ``..._adversarial.json``), each line ``{"question_id", "image", "text", "label"}``
with ``label`` yes or no; images are COCO val2014 files named by ``image``. The split is a line's
``category`` when it has one, else the last ``_`` part of the file name."""

from __future__ import annotations

from pathlib import Path

from mmtune.errors import DataError
from mmtune.evaluation.benchmarks.common import BenchFiles, ask, existing, get, image_path, read_jsonl
from mmtune.evaluation.runner import EvalItem


def read_pope(files: BenchFiles, prompt: str) -> list[EvalItem]:
    """The questions of every given POPE file, with their label and split."""
    root, items = files.root(), []
    for name in files.data:
        path = existing(name, "--data")
        default_split = Path(name).stem.rsplit("_", 1)[-1]
        for n, q in enumerate(read_jsonl(path)):
            where = f"line {n + 1}"
            qid = get(q, "question_id", path, where)
            label = str(get(q, "label", path, where)).strip().lower()
            if label not in ("yes", "no"):
                raise DataError(f"{path}: {where} has label {label!r}, not yes or no")
            split = str(q.get("category") or default_split)
            image = image_path(root, get(q, "image", path, where), path, f"question {qid}")
            record = ask(get(q, "text", path, where), prompt, str(image), f"{split}/{qid}")
            items.append(EvalItem(record, [label], kind=split, ident={"question_id": qid, "split": split}))
    return items
