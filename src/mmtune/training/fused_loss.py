"""The supervised-only language-modelling loss: the vocabulary head runs only where a label exists.

``token_loss_sum(model(...), labels)`` materialises logits for every position ``[B, T, V]`` (and an
fp32 copy of them for the cross-entropy), although prompts, image positions, padding and the last
token of each packed sample have no target. :func:`supervised_loss_sum` takes the final hidden states
instead (``model(..., return_hidden=True)``), gathers the rows whose label is not ``-100``, and runs
the output projection and an fp32 cross-entropy over them in chunks of ``chunk_size`` rows. The sum
equals the full-logits sum (same matmul dtype, same fp32 cross-entropy), and so do the gradients.

Under FSDP2 the output layer's weight is sharded outside the model's forward pass; pass the output
*module* (``decoder(model).output``) so that the call goes through the module and its parameters are
the gathered ones, never a ``DTensor`` shard. A bare weight ``[V, D]`` works for unsharded models.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
import torch.nn.functional as F

from mmtune.data.encode import IGNORE_INDEX

DEFAULT_CHUNK_ROWS = 4096

Projection = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def _project(rows: torch.Tensor, output: Projection) -> torch.Tensor:
    """Logits of ``rows`` [N, D] through a weight [V, D] or an output module."""
    if isinstance(output, torch.Tensor):
        return F.linear(rows.to(output.dtype), output)
    return output(rows)


def supervised_rows(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden rows [N, D] whose label is not ``-100`` and their targets [N], in row-major order."""
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden states {tuple(hidden.shape)} and labels {tuple(labels.shape)} "
                         "disagree on the positions")
    keep = (labels != IGNORE_INDEX).reshape(-1).nonzero().squeeze(-1)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep), labels.reshape(-1).index_select(0, keep)


def supervised_loss_sum(hidden: torch.Tensor, output: Projection, labels: torch.Tensor,
                        chunk_size: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """Sum of fp32 cross-entropies at the positions whose label is not ``-100``.

    ``hidden`` [B, T, D] are the final-norm hidden states, ``output`` the vocabulary head (a weight
    ``[V, D]`` or the module itself, see the module docstring), ``labels`` [B, T] already shifted.
    Returns a float32 scalar; with nothing supervised it is 0 and still reaches the head's weight in
    the backward pass (a zero gradient), so every rank runs the same collectives under FSDP2.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    rows, targets = supervised_rows(hidden, labels)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, max(rows.shape[0], 1), chunk_size):
        logits = _project(rows[start:start + chunk_size], output).float()
        total = total + F.cross_entropy(logits, targets[start:start + chunk_size], reduction="sum")
    return total
