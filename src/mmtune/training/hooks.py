"""Step hooks: work the trainer runs at chosen steps on a full copy of the model (evaluation during
training), without the training layer knowing what the work is.

A hook says at which steps it is due; when one is, the trainer builds one unsharded copy of the model
on every rank (:func:`unsharded_copy`: each tensor gathered in turn from its FSDP / tensor-parallel
shards), in the compute dtype and eval mode, hands it to every due hook and logs what they return
beside the loss (``metrics.jsonl``, TensorBoard). Hooks are collective: every rank calls them.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from mmtune.distributed.materialize import state_targets


class StepHook(Protocol):
    """Work run at some optimizer steps on a full copy of the model."""

    name: str

    def due(self, step: int, total_steps: int) -> bool:
        """Whether the hook runs after optimizer step ``step`` of ``total_steps``."""
        ...

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        """Runs on ``model`` (unsharded, eval mode) on every rank; returns the numbers to log."""
        ...


@torch.no_grad()
def unsharded_copy(model: nn.Module, build_model: Callable[[str], nn.Module], device: torch.device,
                   dtype: torch.dtype) -> nn.Module:
    """A plain (unsharded) copy of ``model`` on ``device`` in ``dtype``, in eval mode: built on the meta
    device by ``build_model`` and filled tensor by tensor (a sharded tensor is gathered whole first)."""
    copy = build_model("meta")
    copy.to_empty(device=device)
    copy.init_buffers(device)
    sources = state_targets(model)
    for name, target in state_targets(copy).items():
        value = sources[name]
        target.copy_(value.full_tensor() if isinstance(value, DTensor) else value)
    return copy.to(dtype).eval()
