"""What every benchmark reader shares: the files of a run, JSON reading and field access with one-line
errors naming the file and the field, image paths, and the prompt record of one question."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from mmtune.data.records import ImageRef, Message, Record
from mmtune.errors import DataError


@dataclass
class BenchFiles:
    """The local files of one benchmark run."""

    data: list[str]
    """The question file(s): POPE takes one per split, the other benchmarks one."""
    annotations: Optional[str] = None
    """VQAv2's annotations JSON (the human answers); ScienceQA's pid_splits.json."""
    image_root: Optional[str] = None
    """The folder the images are in (default: the question file's folder)."""
    split: Optional[str] = None
    """ScienceQA and the Karpathy COCO file: which split to read (default test)."""

    def only_data(self, task: str) -> Path:
        """The single question file of a benchmark that takes one."""
        if len(self.data) != 1:
            raise DataError(f"--task {task} reads one --data file, got {len(self.data)}")
        return existing(self.data[0], "--data")

    def root(self) -> Path:
        """The image folder."""
        return Path(self.image_root) if self.image_root else Path(self.data[0]).parent


def existing(path: str | Path, what: str) -> Path:
    """``path`` as a Path; DataError naming ``what`` when there is no such file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what}: file not found: {p}")
    return p


def read_json(path: str | Path) -> Any:
    """The parsed JSON of ``path``; one-line DataError for a missing or malformed file."""
    p = existing(path, "benchmark file")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: not valid JSON ({exc})") from None


def read_jsonl(path: str | Path) -> list[dict]:
    """The JSON objects of a file holding one per line (or one JSON list)."""
    p = existing(path, "benchmark file")
    text = p.read_text(encoding="utf-8").strip()
    if text.startswith("["):
        rows = read_json(p)
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(f"{p} line {n}: not valid JSON") from None
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{p}: expected one JSON object per line")
    return rows


def get(entry: Any, key: str, path: str | Path, where: str) -> Any:
    """``entry[key]``; DataError naming the file, the entry and the field when it is missing."""
    if not isinstance(entry, dict) or key not in entry:
        raise DataError(f"{path}: {where} has no field {key!r}")
    return entry[key]


def top(data: Any, key: str, path: str | Path, layout: str) -> list:
    """The list under ``data[key]``; DataError naming the expected layout when it is not there."""
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path}: expected {layout} (a JSON object with a {key!r} list)")
    return data[key]


def image_path(root: Path, name: str, path: str | Path, where: str) -> Path:
    """``root / name``; DataError naming the question file and the entry when the image is missing."""
    p = root / name
    if not p.is_file():
        raise DataError(f"{path}: image of {where} not found: {p}")
    return p


def ask(question: str, prompt: str, image: Optional[ImageRef], key: str) -> Record:
    """The prompt record of one question: the image marker, the question, then the task's instruction."""
    text = f"{question}\n{prompt}" if prompt else question
    return Record(messages=(Message("user", f"<image>\n{text}" if image is not None else text),),
                  image=image, key=key)
