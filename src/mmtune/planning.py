"""The memory planner behind ``mmtune plan``: per-GPU memory of a full-parameter run, and the cheapest
layout (tensor-parallel degree, activation checkpointing) that fits.

The model matches mmtune's training setup (``distributed/parallelize.py``): FSDP2 shards every
parameter in fp32 over the data-parallel ranks, computes in bf16 and reduces gradients in fp32; AdamW
keeps two fp32 moments per trainable parameter; tensor parallelism splits the decoder blocks' matrices
over ``tp`` ranks (no sequence parallelism, so norms and residuals are not split). Decoder and connector
parameters are counted with closed formulas (tests check them against the modules built on the meta
device); the vision tower is built on the meta device and counted.

Activations (bytes per token per decoder block, bf16 with the RMSNorms' fp32 internals):
``20*dim + 4*kv_dim + 8*ffn_hidden`` without checkpointing (norm inputs/outputs, q/k/v, the attention
output, the SwiGLU's four hidden-size tensors; flash/SDPA attention stores no score matrix); with
checkpointing only each block's bf16 input (``2*dim``) plus one block recomputed at a time. Logits take
``10`` bytes per token and vocabulary entry (bf16 output, fp32 copy for the loss, its gradient). A
fixed ``CONTEXT_GB`` (CUDA context, NCCL buffers) and a ``FRAGMENTATION`` margin on everything else
are added. These are estimates meant to choose a layout, not to replace a trial step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from mmtune.config import ConnectorConfig, ModelConfig, TrainableConfig, VisionConfig
from mmtune.models.llama import ffn_hidden_dim

GB = 1024**3
CONTEXT_GB = 2.0
FRAGMENTATION = 0.10
ADAM_BYTES = 8
FP32 = 4
BF16 = 2
LOGIT_BYTES = 10


@dataclass
class ParamCounts:
    """Parameters of each part of the model, and which of them train."""

    llm: int
    vision: int
    connector: int
    llm_blocks: int
    trainable: int

    @property
    def total(self) -> int:
        """All parameters."""
        return self.llm + self.vision + self.connector


@dataclass
class Layout:
    """How the run is spread over the GPUs."""

    tp: int = 1
    checkpointing: bool = False


@dataclass
class Estimate:
    """Predicted per-GPU memory (GiB) of one layout."""

    layout: Layout
    parts: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    fits: bool = False


@dataclass
class Workload:
    """What is being trained and on what."""

    model: ModelConfig
    vision: VisionConfig
    connector: ConnectorConfig
    trainable: TrainableConfig
    gpus: int = 8
    seq: int = 512
    micro_batch: int = 4
    gpu_mem_gb: float = 80.0


def decoder_parameters(cfg: ModelConfig) -> tuple[int, int]:
    """(all decoder parameters, those inside the blocks) of a :class:`Transformer` built from ``cfg``."""
    head_dim = cfg.dim // cfg.n_heads
    kv = (cfg.n_kv_heads or cfg.n_heads) * head_dim
    hidden = ffn_hidden_dim(cfg)
    block = 2 * cfg.dim * cfg.dim + 2 * cfg.dim * kv + 3 * cfg.dim * hidden + 2 * cfg.dim
    if cfg.qkv_bias:
        block += cfg.dim + 2 * kv
    embeddings = cfg.vocab_size * cfg.dim * (1 if cfg.tie_embeddings else 2)
    blocks = cfg.n_layers * block
    return blocks + embeddings + cfg.dim, blocks


def connector_parameters(cfg: ConnectorConfig, feature_dim: int, dim: int) -> int:
    """Parameters of the connector: ``mlp`` Linear-GELU-Linear (biases included); ``qformer`` Linear +
    LayerNorm plus the ``start_img`` / ``end_img`` embeddings."""
    if cfg.kind == "mlp":
        hidden = cfg.hidden_dim or dim
        return feature_dim * cfg.merge ** 2 * hidden + hidden + hidden * dim + dim
    return feature_dim * dim + dim + 2 * dim + 2 * dim


def tower_size(vision: VisionConfig) -> tuple[int, int, int]:
    """(parameters, feature width, tokens per image) of the vision tower, built on the meta device."""
    from mmtune.models.vision import build_tower

    if vision.kind == "none":
        return 0, 0, 0
    with torch.device("meta"):
        tower = build_tower(vision)
    assert tower is not None
    return sum(p.numel() for p in tower.parameters()), tower.hidden_size, tower.num_tokens


def count_parameters(work: Workload) -> ParamCounts:
    """Parameter counts of the whole model and of its trainable part."""
    llm, blocks = decoder_parameters(work.model)
    vision, feature_dim, _ = tower_size(work.vision)
    connector = connector_parameters(work.connector, feature_dim, work.model.dim) if vision else 0
    parts = {"llm": llm, "vision": vision, "connector": connector}
    trainable = sum(n for name, n in parts.items() if getattr(work.trainable, name) == "full")
    return ParamCounts(llm=llm, vision=vision, connector=connector, llm_blocks=blocks, trainable=trainable)


def activation_bytes_per_token(cfg: ModelConfig, tp: int, checkpointing: bool) -> float:
    """Activation bytes each token keeps for the backward pass, summed over the decoder blocks."""
    kv = (cfg.n_kv_heads or cfg.n_heads) * (cfg.dim // cfg.n_heads)
    hidden = ffn_hidden_dim(cfg)
    split = BF16 * (2 * cfg.dim + 2 * kv + 4 * hidden) / tp
    block = BF16 * 4 * cfg.dim + FP32 * 2 * cfg.dim + split
    if checkpointing:
        return BF16 * cfg.dim * cfg.n_layers + block
    return block * cfg.n_layers


def estimate(work: Workload, counts: ParamCounts, layout: Layout) -> Estimate:
    """Per-GPU memory of ``work`` under ``layout``, part by part (GiB)."""
    dp = work.gpus // layout.tp
    blocks = counts.llm_blocks
    trained_blocks = blocks if work.trainable.llm == "full" else 0

    def per_gpu(total: int, in_blocks: int) -> float:
        # Decoder blocks are split over all GPUs (TP x FSDP); the rest is sharded over the dp ranks only.
        return in_blocks / work.gpus + (total - in_blocks) / dp

    trainable = per_gpu(counts.trainable, trained_blocks)
    block_params = blocks / max(work.model.n_layers, 1) / layout.tp
    root = counts.llm - blocks + counts.connector
    root_grads = root if work.trainable.llm == "full" else counts.connector * (work.trainable.connector == "full")
    tokens = work.seq * work.micro_batch
    parts = {
        "params": per_gpu(counts.total, blocks) * FP32,
        "grads": trainable * FP32,
        "optimizer": trainable * ADAM_BYTES,
        "gathered": 2 * block_params * BF16 + root * BF16 + root_grads * FP32,
        "activations": tokens * activation_bytes_per_token(work.model, layout.tp, layout.checkpointing),
        "logits": tokens * work.model.vocab_size * LOGIT_BYTES,
    }
    gb = {name: value / GB for name, value in parts.items()}
    total = sum(gb.values()) * (1 + FRAGMENTATION) + CONTEXT_GB
    gb["context"] = CONTEXT_GB
    return Estimate(layout=layout, parts=gb, total=total, fits=total <= work.gpu_mem_gb)


def candidate_layouts(work: Workload) -> list[Layout]:
    """Layouts from cheapest to dearest: no tensor parallelism before any, and at each degree without
    activation checkpointing (a third more compute) before with it. ``tp`` must divide the GPUs and the
    (key/value) heads."""
    kv = work.model.n_kv_heads or work.model.n_heads
    out = []
    tp = 1
    while tp <= work.gpus:
        if work.gpus % tp == 0 and work.model.n_heads % tp == 0 and kv % tp == 0:
            out.extend([Layout(tp, False), Layout(tp, True)])
        tp *= 2
    return out


def plan(work: Workload) -> tuple[ParamCounts, list[Estimate], Optional[Estimate]]:
    """Counts, the estimate of every candidate layout, and the cheapest one that fits (None if none)."""
    counts = count_parameters(work)
    estimates = [estimate(work, counts, layout) for layout in candidate_layouts(work)]
    best = next((e for e in estimates if e.fits), None)
    return counts, estimates, best
