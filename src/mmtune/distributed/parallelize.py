"""Spreads a model over the mesh: tensor parallel, activation checkpointing, compile, then FSDP2.

The order is torchtitan's: tensor parallel first (DTensor ``parallelize_module`` on the tensor-parallel
sub-mesh), then a non-reentrant activation-checkpoint wrapper per decoder block, then ``compile`` per
block (in place, so parameter names do not change), and last ``fully_shard`` on the data-parallel
sub-mesh per decoder block, on the token embedding and the vocabulary head (when untied: the embedding
is then gathered only for its lookup, and the loss can run the head on supervised positions only) and on
the root. The vision tower and connector stay in the root's group on purpose: a
rank whose micro-batch holds no image skips the tower, and a tower sharded on its own would then miss
the all-gather the other ranks issue (a hang or a collective mismatch on mixed text/image batches).

The decoder blocks are found through the model contract of ``docs/architecture.md``: the
``layers`` list of ``model.llm`` (a :class:`~mmtune.models.vlm.VisionLanguageModel`) or of the model
itself (a bare ``Transformer``).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from mmtune.config import ParallelConfig
from mmtune.errors import ConfigError

log = logging.getLogger(__name__)

# Meta's names: column-parallel inputs, row-parallel outputs (Megatron layout).
TP_PLAN = {
    "attention.wq": "col", "attention.wk": "col", "attention.wv": "col", "attention.wo": "row",
    "feed_forward.w1": "col", "feed_forward.w3": "col", "feed_forward.w2": "row",
}


def decoder(model: nn.Module) -> nn.Module:
    """The decoder (``Transformer``) inside ``model``: ``model.llm`` when present, else ``model``."""
    llm = getattr(model, "llm", None)
    return llm if isinstance(llm, nn.Module) else model


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of ``model`` (``decoder(model).layers``)."""
    layers = getattr(decoder(model), "layers", None)
    assert isinstance(layers, nn.ModuleList), "the decoder must keep its blocks in a ModuleList `layers`"
    return layers


def separate_head(model: nn.Module) -> Optional[nn.Module]:
    """The decoder's vocabulary projection ``output`` when it can be sharded (and called) on its own,
    i.e. when it does not share its weight with the token embedding; else None."""
    dec = decoder(model)
    head, embeddings = getattr(dec, "output", None), getattr(dec, "tok_embeddings", None)
    if not isinstance(head, nn.Linear) or embeddings is None or head.weight is embeddings.weight:
        return None
    return head


def compute_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The parameter dtype in compute: ``auto`` is bf16 on GPU and fp32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if dtype == "bf16" else torch.float32


def check_tensor_parallel(model_heads: int, kv_heads: int, tp: int) -> None:
    """Raises ConfigError when the attention heads cannot be split over ``tp`` ranks."""
    for name, value in (("model.n_heads", model_heads), ("model.n_kv_heads", kv_heads)):
        if value % tp:
            raise ConfigError(name, value, f"a multiple of parallel.tp={tp}")


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Shards every block's attention and feed-forward projections over ``tp_mesh`` (Megatron layout).

    Attention infers its local head count from the projection widths, so no attribute changes.
    """
    cfg = getattr(decoder(model), "cfg", None)
    if cfg is not None:
        check_tensor_parallel(cfg.n_heads, cfg.n_kv_heads or cfg.n_heads, tp_mesh.size())
    plan = {name: ColwiseParallel() if kind == "col" else RowwiseParallel() for name, kind in TP_PLAN.items()}
    for block in decoder_blocks(model):
        parallelize_module(block, tp_mesh, plan)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Wraps each decoder block so its activations are recomputed in the backward pass."""
    blocks = decoder_blocks(model)
    for i, block in enumerate(blocks):
        blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def apply_compile(model: nn.Module) -> None:
    """Compiles each decoder block in place (parameter names are unchanged)."""
    for block in decoder_blocks(model):
        block.compile()


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, param_dtype: torch.dtype,
               reshard_after_forward: bool = True) -> None:
    """``fully_shard`` per decoder block, on an untied head, and on the root (tower and connector
    included); gradients reduce in fp32."""
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    blocks = decoder_blocks(model)
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        fully_shard(block, mesh=dp_mesh, mp_policy=policy,
                    reshard_after_forward=reshard_after_forward and not last)
    head = separate_head(model)
    if head is not None:
        embeddings = decoder(model).tok_embeddings  # its own unit: freed after the lookup, not held all step
        fully_shard(embeddings, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
        fully_shard(head, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    model.set_reduce_scatter_unused_params(True)  # a rank without images has no connector gradient


def needs_fsdp(dp_size: int, tensor_parallel: bool, param_dtype: torch.dtype) -> bool:
    """FSDP only where it does something: sharding over several data-parallel ranks, mixed precision,
    or composing with tensor parallel. A single fp32 rank trains the bare module (its hooks and
    DTensor bookkeeping cost more than a tiny model's whole backward)."""
    return dp_size > 1 or tensor_parallel or param_dtype != torch.float32


def parallelize(model: nn.Module, cfg: ParallelConfig, dp_mesh: DeviceMesh, tp_mesh: Optional[DeviceMesh],
                param_dtype: torch.dtype) -> nn.Module:
    """Applies tensor parallel (when ``tp_mesh``), activation checkpointing, compile and FSDP2 in
    that order, in place; returns ``model``."""
    if tp_mesh is not None:
        apply_tensor_parallel(model, tp_mesh)
    if cfg.activation_checkpointing:
        apply_activation_checkpointing(model)
    if cfg.compile:
        apply_compile(model)
    sharded = needs_fsdp(dp_mesh.size(), tp_mesh is not None, param_dtype)
    if sharded:
        apply_fsdp(model, dp_mesh, param_dtype, cfg.reshard_after_forward)
    log.info("parallelized: tp=%s, fsdp=%s, activation checkpointing=%s, compile=%s, param dtype %s",
             tp_mesh.size() if tp_mesh is not None else 1, sharded, cfg.activation_checkpointing,
             cfg.compile, param_dtype)
    return model
