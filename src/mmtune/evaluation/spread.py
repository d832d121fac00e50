"""Evaluation spread over the ranks of a ``torchrun`` job (or training's ranks): rank r answers items
r, r + N, r + 2N, ...; every rank then holds every answer in the original order, so the scores are
those of one process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch.distributed as dist

from mmtune.distributed.env import all_gather_objects

if TYPE_CHECKING:
    from mmtune.evaluation.runner import EvalItem, Predictor


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks (0 and 1 without a process group)."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def predict_spread(predictor: "Predictor", items: Sequence["EvalItem"], batch_size: int, desc: str) -> None:
    """Fills every item's prediction, each rank answering its share (one all-gather at the end)."""
    rank, world = rank_and_world()
    mine = list(range(rank, len(items), world))
    predictor.predict([items[i] for i in mine], batch_size, desc=desc, show=rank == 0)
    for part in all_gather_objects([(i, items[i].prediction) for i in mine]):
        for index, text in part:
            items[index].prediction = text
