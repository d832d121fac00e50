"""Multiple-choice benchmarks in their release layouts: MMBench and ScienceQA.

* MMBench: the TSV (``index``, ``question``, ``hint``, option columns ``A``..``E``, ``answer`` (absent
  in the test split), ``category``, ``image`` as base64; a short all-digit ``image`` names the row
  whose image it shares). Each question is asked once per rotation of its options (circular
  evaluation); LLaVA-1.5's prompt puts the hint, the question and ``A. option`` lines in that order.
* ScienceQA: ``problems.json`` (``{pid: {"question", "choices", "answer", "hint", "image", "subject"}}``)
  and ``pid_splits.json`` (``{"test": [pid, ...], ...}``); only questions with an image are read, from
  ``<image_root>/<split>/<pid>/<image>`` (or ``<image_root>/<pid>/<image>``).
"""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from pathlib import Path

from mmtune.errors import DataError
from mmtune.evaluation.benchmarks.common import BenchFiles, ask, get, read_json
from mmtune.evaluation.runner import EvalItem

LETTERS = "ABCDEFGHIJ"


def _blank(value: object) -> bool:
    return value is None or str(value).strip() in ("", "nan", "NaN", "None")


def options_text(options: list[str]) -> str:
    """``A. first`` / ``B. second`` lines."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def _mmbench_rows(path: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    for name in ("index", "question", "A", "B", "image"):
        if rows and name not in rows[0]:
            raise DataError(f"{path}: expected the MMBench TSV layout; no column {name!r}")
    return rows


def _mmbench_images(path: Path, rows: list[dict]) -> dict[str, bytes]:
    """index -> decoded image bytes; a short all-digit image field points at another row's image."""
    raw = {row["index"]: row["image"] for row in rows}
    out = {}
    for index, value in raw.items():
        source = raw.get(value, value) if len(value) <= 64 and value.isdigit() else value
        try:
            out[index] = base64.b64decode(source, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"{path}: row index {index}: field 'image' is not base64") from None
    return out


def read_mmbench(files: BenchFiles, prompt: str) -> list[EvalItem]:
    """One item per (question, rotation of its options)."""
    path = files.only_data("mmbench")
    rows = _mmbench_rows(path)
    images = _mmbench_images(path, rows)
    items = []
    for row in rows:
        options = [row[c] for c in LETTERS if not _blank(row.get(c))]
        gold = None if _blank(row.get("answer")) else row["answer"].strip()
        if gold is not None and gold not in LETTERS[:len(options)]:
            raise DataError(f"{path}: row index {row['index']}: answer {gold!r} is not one of its options")
        question = row["question"] if _blank(row.get("hint")) else f"{row['hint']}\n{row['question']}"
        for turn in range(len(options)):
            rotated = options[turn:] + options[:turn]
            letter = None if gold is None else LETTERS[rotated.index(options[LETTERS.index(gold)])]
            record = ask(f"{question}\n{options_text(rotated)}", prompt, images[row["index"]],
                         f"{row['index']}/{turn}")
            items.append(EvalItem(record, [letter] if letter else [], kind=row.get("category", ""),
                                  ident={"index": row["index"], "round": turn},
                                  meta={"options": rotated}))
    return items


def _scienceqa_image(root: Path, split: str, pid: str, name: str, path: Path) -> Path:
    for candidate in (root / split / pid / name, root / pid / name):
        if candidate.is_file():
            return candidate
    raise DataError(f"{path}: image of problem {pid} not found: {root / split / pid / name}")


def read_scienceqa(files: BenchFiles, prompt: str) -> list[EvalItem]:
    """The image questions of one ScienceQA split (``files.split``, default test)."""
    path = files.only_data("scienceqa")
    if files.annotations is None:
        raise DataError("--task scienceqa needs --annotations pid_splits.json")
    problems, splits = read_json(path), read_json(files.annotations)
    split = files.split or "test"
    if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
        raise DataError(f"{files.annotations}: expected the pid_splits layout with a {split!r} list")
    if not isinstance(problems, dict):
        raise DataError(f"{path}: expected the ScienceQA problems layout (a JSON object of pid -> problem)")
    root, items = files.root(), []
    for pid in map(str, splits[split]):
        problem = get(problems, pid, path, "problems.json")
        if not problem.get("image"):
            continue
        where = f"problem {pid}"
        choices = [str(c) for c in get(problem, "choices", path, where)]
        answer = int(get(problem, "answer", path, where))
        context = f"Context: {problem['hint']}\n" if not _blank(problem.get("hint")) else ""
        question = f"{context}{get(problem, 'question', path, where)}\n{options_text(choices)}"
        image = _scienceqa_image(root, split, pid, str(problem["image"]), path)
        items.append(EvalItem(ask(question, prompt, str(image), pid), [LETTERS[answer]],
                              kind=str(problem.get("subject", "")), ident={"pid": pid},
                              meta={"options": choices}))
    return items
