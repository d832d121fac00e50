"""Fills a sharded model tensor by tensor: each rank keeps only its own shard or slice of each tensor.

A model is built on the meta device, parallelised (FSDP2 / tensor parallel), then ``to_empty`` gives
every rank storage for its own pieces only. :func:`copy_full` takes one full tensor (read from a file, or
a freshly initialised unit) and copies the part this rank holds into the parameter: a row block for an
FSDP shard, a column or row block for a tensor-parallel slice, both for 2-D. Nothing is broadcast and no
rank ever holds more than its shards plus the one full tensor in hand.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")


def canonical_name(name: str) -> str:
    """A parameter or buffer name without activation-checkpoint or compile wrapper prefixes."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def state_targets(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s parameters and persistent buffers (DTensors when sharded) under canonical names;
    a tied weight appears under each of its names."""
    return {canonical_name(k): v for k, v in model.state_dict(keep_vars=True).items()}


def local_piece(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The part of ``full`` (the whole tensor, on the CPU) that ``target`` holds on this rank.

    Plain row / column shards are sliced on the CPU; other placements (FSDP's strided shards over a
    tensor-parallel dimension) go through ``distribute_tensor`` without communication.
    """
    if not isinstance(target, DTensor):
        return full
    mesh, placements = target.device_mesh, target.placements
    if all(type(p) in (Shard, Replicate) for p in placements):
        shape, offset = compute_local_shape_and_global_offset(full.shape, mesh, placements)
        return full[tuple(slice(o, o + s) for o, s in zip(offset, shape))]
    return distribute_tensor(full, mesh, placements, src_data_rank=None).to_local()


@torch.no_grad()
def copy_full(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copies this rank's part of the full tensor ``full`` into ``target`` (cast to its dtype and device)."""
    piece = local_piece(full, target)
    local = target.to_local() if isinstance(target, DTensor) else target
    if local.shape != piece.shape:
        raise AssertionError(f"local shard {tuple(local.shape)} != piece {tuple(piece.shape)}")
    local.copy_(piece)
