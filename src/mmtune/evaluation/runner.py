"""Evaluation runs: a saved model answers a dataset (batched greedy decoding) and is scored.

Items come from any supported data format (:func:`mmtune.data.sources.open_source`):

* ``caption``: each caption record (manifest, webdataset) asks for its image's caption; every caption
  of the entry (a manifest may list several) is a reference. With ``prompt`` the request is a user turn
  (for chat-tuned models) instead of the bare caption template. Entries that carry the synthetic world's
  ``scene`` facts are also scored by :func:`mmtune.data.synth.caption_correct` (``caption_accuracy``).
* ``vqa``: every assistant turn of every conversation (LLaVA, Alpaca) is one question; the turns before
  it are the history, given with their reference answers. An entry's optional ``answers`` list (VQAv2
  style, for single-turn entries) holds the human answers for the VQA accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch
from tqdm import tqdm

from mmtune.config import SourceConfig
from mmtune.data.badrecords import BadRecord
from mmtune.data.records import ImageRef, Message, Record
from mmtune.errors import DataError
from mmtune.evaluation.metrics import bleu, caption_exact_match, cider_d
from mmtune.evaluation.scoring import vqa_accuracy, vqa_exact_match
from mmtune.evaluation.spread import predict_spread
from mmtune.inference.engine import Engine
from mmtune.inference.request import ChatRequest

log = logging.getLogger(__name__)

Task = Literal["caption", "vqa"]


@dataclass
class EvalItem:
    """One prompt to answer and what a right answer looks like."""

    record: Record
    """The prompt: a conversation ending with a user turn, or a caption record without the caption."""
    references: list[str]
    """Reference answers (several captions, or the human answers of a VQA question)."""
    scene: Optional[list] = None
    """The synthetic world's facts [[kind, colour, position], ...] of the image, when known."""
    kind: str = ""
    """A label for reports (the question's first words, or "caption")."""
    ident: dict = field(default_factory=dict)
    """The benchmark's own id fields (question_id, index, pid, image_id; a split or rotation), written
    with the answer to the predictions file."""
    meta: dict = field(default_factory=dict)
    """What the benchmark's scoring needs besides the references (a label, options, a category)."""
    prediction: str = field(default="", compare=False)


def _raw_entries(source: Any) -> list[tuple[Record | BadRecord, dict]]:
    return list(source.entries())


def _image_bytes(image: Optional[ImageRef]) -> Optional[bytes]:
    """The encoded bytes of a dataset record's image (a path is read; the engine takes file bytes)."""
    if image is None or isinstance(image, bytes):
        return image
    if isinstance(image, (bytearray, memoryview)):
        return bytes(image)
    path = Path(str(image))
    if not path.is_file():
        raise DataError(f"image file not found: {image}")
    return path.read_bytes()


def _caption_items(record: Record, entry: dict, prompt: Optional[str]) -> list[EvalItem]:
    assistant = [m.content for m in record.messages if m.role == "assistant"]
    if any(m.role == "user" for m in record.messages) or len(assistant) != 1:
        raise DataError(f"record {record.key!r}: the caption task needs caption records (one caption, no question)")
    raw = entry.get("caption", entry.get("captions"))
    references = [c for c in raw if isinstance(c, str)] if isinstance(raw, list) else assistant
    messages = (Message("user", f"<image>\n{prompt}"),) if prompt else ()
    prompt_record = replace(record, messages=messages, template=None if prompt else record.template)
    return [EvalItem(prompt_record, references, entry.get("scene"), "caption")]


def _qa_items(record: Record, entry: dict) -> list[EvalItem]:
    items, messages = [], list(record.messages)
    for i, message in enumerate(messages):
        if message.role != "assistant" or i == 0:
            continue
        prompt = replace(record, messages=tuple(messages[:i]))
        answers = entry.get("answers") if len(messages) == 2 else None
        references = [a for a in answers if isinstance(a, str)] if isinstance(answers, list) else [message.content]
        question = messages[i - 1].content.replace("<image>", "").strip()
        items.append(EvalItem(prompt, references, entry.get("scene"), " ".join(question.split()[:3])))
    return items


def load_items(path: str, task: Task, *, image_root: Optional[str] = None, prompt: Optional[str] = None,
               limit: Optional[int] = None) -> list[EvalItem]:
    """The evaluation items of a dataset file (see the module docstring); DataError when none."""
    from mmtune.data.sources import open_source

    if image_root is None and "://" not in path:
        image_root = str(Path(path).parent)
    source = open_source(SourceConfig(path=path, image_root=image_root), default_root=None, where="--data")
    items: list[EvalItem] = []
    bad = 0
    for record, entry in _raw_entries(source):
        if isinstance(record, BadRecord):
            bad += 1
            continue
        items.extend(_caption_items(record, entry, prompt) if task == "caption" else _qa_items(record, entry))
        if limit is not None and len(items) >= limit:
            break
    if bad:
        log.warning("%s: %d unreadable entries skipped", path, bad)
    if not items:
        raise DataError(f"{path}: no {task} items found")
    return items[:limit]


class Predictor:
    """Answers :class:`EvalItem` prompts in batches with greedy decoding on the inference engine, so the
    prompt, image, answer prefix and detokenisation are exactly what ``serve`` and ``generate`` use."""

    def __init__(self, engine: Engine, template: str, max_new_tokens: int = 64,
                 system_prompt: Optional[str] = None):
        self.engine, self.template = engine, template
        self.max_new_tokens, self.system_prompt = max_new_tokens, system_prompt

    @classmethod
    def from_dir(cls, model_dir: str, template: str, max_new_tokens: int = 64,
                 system_prompt: Optional[str] = None, device: str = "cpu",
                 dtype: Optional[torch.dtype] = None) -> "Predictor":
        """Loads a model (any ``--model`` format) on ``device`` in ``dtype`` (None: fp32);
        ``system_prompt`` as ``data.system_prompt`` in training."""
        engine = Engine.from_dir(model_dir, device=device, dtype=dtype, template=template)
        return cls(engine, template, max_new_tokens, system_prompt)

    def request(self, record: Record) -> ChatRequest:
        """The engine request of one prompt record (greedy, the record's own template if it has one)."""
        return ChatRequest(messages=list(record.messages), image=_image_bytes(record.image), prefix=record.prefix,
                           template=record.template or self.template, system_prompt=self.system_prompt,
                           max_new_tokens=self.max_new_tokens, temperature=0.0)

    def answer(self, records: Sequence[Record]) -> list[str]:
        """Greedy answers to one batch of prompts; a prefix is kept at the answer's start (as ``mmtune
        generate`` prints it)."""
        completions = self.engine.run_batch([self.engine.prepare(self.request(r)) for r in records])
        return [(r.prefix or "") + c.text for r, c in zip(records, completions)]

    def predict(self, items: list[EvalItem], batch_size: int = 32, desc: str = "eval",
                show: bool = True) -> list[EvalItem]:
        """Fills ``item.prediction`` for every item (text-only and image prompts batch separately)."""
        groups = [[i for i in items if i.record.has_image], [i for i in items if not i.record.has_image]]
        with tqdm(total=len(items), desc=desc, unit="item", disable=not show) as bar:
            for group in groups:
                for start in range(0, len(group), batch_size):
                    batch = group[start:start + batch_size]
                    for item, text in zip(batch, self.answer([i.record for i in batch])):
                        item.prediction = text
                    bar.update(len(batch))
        return items


def score_captions(items: Sequence[EvalItem]) -> dict[str, float]:
    """BLEU-4, CIDEr-D, exact match and, when every item knows its scene, caption accuracy."""
    hyps, refs = [i.prediction for i in items], [i.references for i in items]
    scores = {"bleu4": bleu(hyps, refs), "cider": cider_d(hyps, refs), "exact_match": caption_exact_match(hyps, refs),
              "count": float(len(items))}
    if items and all(i.scene for i in items):
        scores["caption_accuracy"] = sum(map(caption_is_correct, items)) / len(items)
    return scores


def caption_is_correct(item: EvalItem) -> bool:
    """Whether a predicted caption states exactly the facts of the item's synthetic scene."""
    from mmtune.data.synth import Scene, Shape, caption_correct

    assert item.scene is not None
    scene = Scene(tuple(Shape(position, kind, colour) for kind, colour, position in item.scene))
    return caption_correct(item.prediction, scene)


def score_vqa(items: Sequence[EvalItem]) -> dict[str, Any]:
    """Exact match (against the most common reference), overall and by question kind; with several
    human answers per question (an entry's ``answers`` list), the VQA accuracy too."""
    exact = [vqa_exact_match(i.prediction, i.references) for i in items]
    by_kind: dict[str, list[float]] = {}
    for item, value in zip(items, exact):
        by_kind.setdefault(item.kind, []).append(value)
    scores = {"exact_match": sum(exact) / max(len(items), 1), "count": len(items),
              "by_question": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}}
    if items and all(len(i.references) > 1 for i in items):
        scores["vqa_accuracy"] = sum(vqa_accuracy(i.prediction, i.references) for i in items) / len(items)
    return scores


def evaluate(predictor: Predictor, data: str, task: Task, *, prompt: Optional[str] = None, batch_size: int = 32,
             limit: Optional[int] = None, image_root: Optional[str] = None) -> dict[str, Any]:
    """Answers a synthetic-world (or any supported format) dataset and scores it, the items spread over
    the ranks of a ``torchrun`` job; the result holds a few sample answers too."""
    items = load_items(data, task, image_root=image_root, prompt=prompt, limit=limit)
    predict_spread(predictor, items, batch_size, desc=f"{task} {Path(data).name}")
    scores = score_captions(items) if task == "caption" else score_vqa(items)
    samples = [{"prompt": [m.content for m in i.record.messages if m.role == "user"][-1:], "prediction": i.prediction,
                "references": i.references[:3]} for i in items[:5]]
    return {"task": task, "data": data, "template": predictor.template, "system_prompt": predictor.system_prompt,
            **scores, "samples": samples}
