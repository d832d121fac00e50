"""Turns a sharded meta-device model into real weights without a full copy on every rank.

Rank 0 holds one ordinary model on the CPU (freshly initialised with the run's seed, or loaded from
saved weights); every rank has the sharded model built on the meta device. After ``to_empty``,
``set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True)`` streams rank 0's tensors
and each rank keeps its shard. Buffers (including non-persistent ones such as RoPE tables and the
position ids of transformers' vision towers) are broadcast too, so the result does not depend on the
number of ranks.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")


def canonical_name(name: str) -> str:
    """A parameter or buffer name without activation-checkpoint or compile wrapper prefixes."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


@torch.no_grad()
def materialize(model: nn.Module, source: Optional[nn.Module], device: torch.device) -> None:
    """Allocates the sharded ``model`` on ``device`` and fills it from rank 0's ``source`` (collective;
    ``source`` is None on the other ranks). Keys and shapes must match exactly."""
    model.to_empty(device=device)
    full = source.state_dict() if source is not None else {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    set_model_state_dict(model, full, options=options)
    source_buffers = dict(source.named_buffers()) if source is not None else {}
    for name, buf in model.named_buffers():
        if source is not None:
            buf.copy_(source_buffers[canonical_name(name)])
        if dist.is_initialized():
            dist.broadcast(buf, src=0)
