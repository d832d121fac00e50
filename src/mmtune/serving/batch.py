"""Batch captioning / VQA: a JSONL file of prompts in, a JSONL file of answers out, with a progress bar.

Each input line is a JSON object with optional ``id``, ``prompt``, ``input``, ``prefix`` and ``image``
(a local path, relative to the input file's folder). Lines that cannot be answered (bad JSON, a
missing or corrupt image, an over-long prompt) get ``{"id", "error"}`` in the output instead of
stopping the run; the answers keep the input order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

from tqdm import tqdm

from mmtune.data.records import Message
from mmtune.errors import DataError, MMTuneError
from mmtune.inference.engine import Engine, Prepared
from mmtune.inference.request import ChatRequest

logger = logging.getLogger(__name__)


def _read_lines(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                item = {"error": f"line {number}: not valid JSON ({exc.msg})"}
            yield number, item if isinstance(item, dict) else {"error": f"line {number}: not a JSON object"}


def _prepare(engine: Engine, base: ChatRequest, item: dict, root: Path) -> Prepared:
    if "error" in item:
        raise DataError(item["error"])
    image = None
    if item.get("image"):
        file = root / str(item["image"])
        if not file.is_file():
            raise DataError(f"image file not found: {item['image']}")
        image = file.read_bytes()
    prompt, extra = str(item.get("prompt") or ""), str(item.get("input") or "")
    messages = [Message("user", prompt, input=extra)] if prompt or extra else []
    prefix: Optional[str] = item.get("prefix", base.prefix)
    return engine.prepare(replace(base, messages=messages, image=image, prefix=prefix))


def run_batch_file(engine: Engine, base: ChatRequest, in_path: str | Path, out_path: str | Path,
                   batch_size: int = 8) -> int:
    """Answers every line of ``in_path`` into ``out_path``; returns the number of lines written."""
    source = Path(in_path)
    if not source.is_file():
        raise DataError(f"batch file not found: {in_path}")
    items = list(_read_lines(source))
    written = 0
    with Path(out_path).open("w", encoding="utf-8") as out, tqdm(total=len(items), desc="generate", unit="prompt") as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            results: list[dict] = []
            ready: list[tuple[int, Prepared]] = []
            for index, (number, item) in enumerate(chunk):
                results.append({"id": item.get("id", number)})
                try:
                    ready.append((index, _prepare(engine, base, item, source.parent)))
                except MMTuneError as exc:
                    results[index]["error"] = str(exc)
            if ready:
                for (index, _), completion in zip(ready, engine.run_batch([p for _, p in ready])):
                    results[index].update(answer=completion.text, finish_reason=completion.finish_reason,
                                          completion_tokens=completion.completion_tokens)
            for result in results:
                out.write(json.dumps(result, ensure_ascii=False) + "\n")
            written += len(results)
            bar.update(len(chunk))
    return written
