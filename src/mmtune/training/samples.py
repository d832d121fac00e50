"""The samples log (``data.log_samples``): what each optimizer step trained on, one file per rank.

``samples/rank{R}.jsonl`` in the run directory gets one JSON line per optimizer step,
``{"step": S, "epoch": E, "keys": [...]}`` (``R`` the global rank, epochs from 0, the keys of the step's
micro-batches in order: :attr:`mmtune.data.batch.Batch.keys`); a step whose micro-batches belong to two
epochs gets one line per epoch. A resumed run appends to the same files. With tensor parallelism only
the first rank of each tensor-parallel group writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmtune.data.batch import Batch


class SamplesLog:
    """Appends a step's keys to ``output_dir/samples/rank{rank}.jsonl`` when ``enabled``; with tensor
    parallelism of degree ``tp`` only the first rank of each group writes (its peers train on the same
    samples)."""

    def __init__(self, output_dir: Path, rank: int, enabled: bool, tp: int = 1):
        self.path = Path(output_dir) / "samples" / f"rank{rank}.jsonl" if enabled and rank % tp == 0 else None

    def write(self, step: int, batches: list[Batch]) -> None:
        """One line per epoch among ``batches`` (usually one), written in a single append."""
        if self.path is None:
            return
        by_epoch: dict[int, list[str]] = {}
        for batch in batches:
            by_epoch.setdefault(batch.epoch, []).extend(batch.keys)
        lines = "".join(json.dumps({"step": step, "epoch": e, "keys": keys}) + "\n" for e, keys in by_epoch.items())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(lines)
