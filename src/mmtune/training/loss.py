"""The language-modelling loss: a sum over supervised tokens, divided by the step's global count.

Labels arrive already shifted (``labels[b, t]`` is the target of the logits at ``t``) with ``-100`` for
positions that are not supervised. Dividing the per-micro-batch sums by the number of supervised tokens
in the whole optimizer step, over all ranks, makes the loss and its gradient the same whatever the
accumulation, padding, packing or number of ranks.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mmtune.data.batch import Batch
from mmtune.data.encode import IGNORE_INDEX
from mmtune.distributed.env import all_reduce_sum


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of fp32 cross-entropies over positions whose label is not ``-100``.

    ``logits`` [B, T, V], ``labels`` [B, T]; returns a scalar (0 when nothing is supervised).
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def step_counts(micro_batches: Sequence[Batch], group: Optional[dist.ProcessGroup] = None,
                device: Optional[torch.device] = None) -> dict[str, int]:
    """Supervised tokens, real tokens and samples in all ``micro_batches`` of this step, summed over
    ``group`` with one all-reduce, and ``tokens_max_rank`` (a second): the real tokens of the busiest rank
    of each micro-batch, summed over the micro-batches (ranks wait for each other at every micro-batch).

    Real tokens have ``sample_ids >= 0``; a row holds ``max(sample_ids) + 1`` samples.
    """
    supervised = samples = 0
    per_micro = []
    for b in micro_batches:
        supervised += int((b.labels != IGNORE_INDEX).sum())
        per_micro.append(int((b.sample_ids >= 0).sum()))
        samples += int((b.sample_ids.amax(dim=1) + 1).sum())
    counts = torch.tensor([supervised, sum(per_micro), samples], dtype=torch.int64, device=device)
    busiest = torch.tensor(per_micro or [0], dtype=torch.int64, device=device)
    counts = all_reduce_sum(counts, group).tolist()
    if dist.is_initialized():
        dist.all_reduce(busiest, op=dist.ReduceOp.MAX, group=group)
    return {"supervised": counts[0], "tokens": counts[1], "samples": counts[2],
            "tokens_max_rank": int(busiest.sum())}
