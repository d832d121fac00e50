"""Evaluation during training: ``training.eval`` tasks as step hooks (:mod:`mmtune.training.hooks`).

Each task's questions are read once, before training starts (a missing file or wrong layout stops the
run at once). At its steps (every ``every`` steps and at the end) the trainer hands the hook a full
copy of the model; the questions are spread over the ranks, answered with the run's ``data.template``
and ``data.system_prompt``, and the metrics come back flat (``eval/pope/accuracy``,
``eval/pope/by_split/random/f1``) for ``metrics.jsonl`` and TensorBoard.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

from torch import nn

from mmtune.config import Config, EvalTaskConfig
from mmtune.data.processor import Processor
from mmtune.evaluation.benchmarks.common import BenchFiles
from mmtune.evaluation.runner import EvalItem, Predictor, load_items, score_captions, score_vqa
from mmtune.evaluation.spread import predict_spread
from mmtune.evaluation.tasks import BENCHMARKS, first_questions, scored
from mmtune.inference.engine import Engine

Scorer = Callable[[Sequence[EvalItem]], dict[str, Any]]


def flatten(data: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numbers of a nested dict under ``prefix/key/subkey`` names."""
    out: dict[str, float] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}/{key}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = float(value)
    return out


def _items_and_scorer(spec: EvalTaskConfig) -> tuple[list[EvalItem], Scorer, int]:
    """The task's questions (the first ``limit``), how they are scored, and the longest answer."""
    if spec.task in ("caption", "vqa"):
        items = load_items(spec.data[0], spec.task, image_root=spec.image_root, prompt=spec.prompt,
                           limit=spec.limit)
        return items, score_captions if spec.task == "caption" else score_vqa, spec.max_new_tokens or 64
    bench = BENCHMARKS[spec.task]
    files = BenchFiles(list(spec.data), spec.annotations, spec.image_root, spec.split)
    items = first_questions(bench.read(files, bench.prompt if spec.prompt is None else spec.prompt), spec.limit)

    def score(answered: Sequence[EvalItem]) -> dict[str, Any]:
        return bench.score(answered) if scored(answered) else {"count": len(answered)}

    return items, score, spec.max_new_tokens or bench.max_new_tokens


class EvalHook:
    """One ``training.eval`` task, run at its steps on the trainer's full model copy."""

    def __init__(self, name: str, spec: EvalTaskConfig, processor: Processor, template: str,
                 system_prompt: str | None):
        self.name, self.every, self.batch_size = name, spec.every, spec.batch_size
        self.items, self.score, self.max_new_tokens = _items_and_scorer(spec)
        self.processor, self.template, self.system_prompt = processor, template, system_prompt

    def due(self, step: int, total_steps: int) -> bool:
        """Every ``every`` steps (when set) and at the last step."""
        return step == total_steps or (self.every > 0 and step % self.every == 0)

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        """Answers the questions (spread over the ranks) and returns the flat metrics."""
        engine = Engine(model, self.processor, self.template)
        predictor = Predictor(engine, self.template, self.max_new_tokens, self.system_prompt)
        predict_spread(predictor, self.items, self.batch_size, desc=f"eval {self.name} (step {step})")
        return flatten(self.score(self.items), f"eval/{self.name}")


def build_hooks(cfg: Config) -> list[EvalHook]:
    """The hooks of ``cfg.training.eval``; a task listed twice is named ``task.N`` by its position."""
    if not cfg.training.eval:
        return []
    processor = Processor.from_config(cfg)
    counts = Counter(spec.task for spec in cfg.training.eval)
    return [EvalHook(spec.task if counts[spec.task] == 1 else f"{spec.task}.{i}", spec, processor,
                     cfg.data.template, cfg.data.system_prompt) for i, spec in enumerate(cfg.training.eval)]
