"""Meta's LLaMA release layout <-> mmtune: ``params.json`` and model-parallel shard dimensions.

Meta's ``consolidated.NN.pth`` files (and LLaMA2-Accessory's ``consolidated.NN-of-MM.model.pth``) hold
fairscale tensor-parallel slices under the same parameter names mmtune uses. Column-parallel layers
(``wq``/``wk``/``wv``/``w1``/``w3``/``output``) are split along dim 0, row-parallel layers
(``wo``/``w2``) and the ``ParallelEmbedding`` (``tok_embeddings``) along dim 1; norms are replicated.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from mmtune.config import ModelConfig, RopeScaling
from mmtune.errors import CheckpointError

_COLUMN = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3")
_ROW = ("attention.wo", "feed_forward.w2")
# Meta's Llama-3.1 `use_scaled_rope` always means these values (llama-models' apply_scaling).
LLAMA31_SCALING = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=8192)
# Tensors that Meta's files carry but that are recomputed, not learned.
IGNORED_KEYS = ("rope.freqs",)
_PARAMS_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                  "ffn_dim_multiplier", "norm_eps", "rope_theta", "use_scaled_rope", "max_batch_size",
                  "max_seq_len")


def shard_dim(name: str) -> Optional[int]:
    """The dimension along which model-parallel shards of decoder tensor ``name`` are concatenated.

    ``None`` means the tensor is replicated in every shard (norms, biases-free scalars).
    """
    module = name.rsplit(".", 1)[0]
    if module == "tok_embeddings":
        return 1
    if module == "output":
        return 0
    if module.endswith(_COLUMN):
        return 0
    if module.endswith(_ROW):
        return 1
    return None


def config_from_params(params: dict[str, Any], vocab_size: Optional[int] = None,
                       max_seq_len: int = 4096) -> ModelConfig:
    """A :class:`ModelConfig` from Meta's ``params.json`` dict.

    ``vocab_size`` -1 (Meta's "take it from the tokenizer") is replaced by the ``vocab_size`` argument
    (the embedding rows found in the checkpoint). ``use_scaled_rope`` selects Llama-3.1 RoPE scaling.
    """
    unknown = sorted(set(params) - set(_PARAMS_FIELDS))
    if unknown:
        raise CheckpointError(f"params.json: unknown fields {unknown}; known: {', '.join(_PARAMS_FIELDS)}")
    missing = [k for k in ("dim", "n_layers", "n_heads") if k not in params]
    if missing:
        raise CheckpointError(f"params.json: missing fields {missing}")
    vocab = int(params.get("vocab_size", -1))
    if vocab <= 0:
        if vocab_size is None:
            raise CheckpointError("params.json: vocab_size is -1 and no embedding size was given")
        vocab = vocab_size
    elif vocab_size is not None and vocab != vocab_size:
        raise CheckpointError(f"params.json: vocab_size {vocab} but the checkpoint embeds {vocab_size} tokens")
    cfg = ModelConfig(
        dim=int(params["dim"]), n_layers=int(params["n_layers"]), n_heads=int(params["n_heads"]),
        n_kv_heads=params.get("n_kv_heads"), vocab_size=vocab,
        multiple_of=int(params.get("multiple_of", 256)),
        ffn_dim_multiplier=params.get("ffn_dim_multiplier"), norm_eps=float(params.get("norm_eps", 1e-5)),
        rope_theta=float(params.get("rope_theta", 10000.0)),
        rope_scaling=LLAMA31_SCALING if params.get("use_scaled_rope") else None,
        max_seq_len=int(params.get("max_seq_len") or max_seq_len),
    )
    try:
        cfg.check("params")
    except ValueError as exc:
        raise CheckpointError(f"params.json: {exc}") from None
    return cfg


def params_from_config(cfg: ModelConfig) -> dict[str, Any]:
    """Meta's ``params.json`` dict for ``cfg`` (refuses what Meta's format cannot express)."""
    if cfg.ffn_hidden_dim is not None or cfg.qkv_bias or cfg.tie_embeddings:
        raise CheckpointError("Meta's params.json cannot express ffn_hidden_dim, qkv_bias or tied embeddings")
    if cfg.rope_scaling is not None and cfg.rope_scaling != LLAMA31_SCALING:
        raise CheckpointError("Meta's params.json only expresses Llama-3.1 rope scaling (use_scaled_rope)")
    params: dict[str, Any] = dict(dim=cfg.dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                                  n_kv_heads=cfg.n_kv_heads, vocab_size=cfg.vocab_size,
                                  multiple_of=cfg.multiple_of, ffn_dim_multiplier=cfg.ffn_dim_multiplier,
                                  norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta)
    if cfg.rope_scaling is not None:
        params["use_scaled_rope"] = True
    return params


def merge_shards(name: str, pieces: list[torch.Tensor], dim: Optional[int]) -> torch.Tensor:
    """Concatenates the model-parallel ``pieces`` of tensor ``name`` along ``dim`` (None: replicated).

    Replicated tensors must be equal in every shard; a mismatch is a :class:`CheckpointError`.
    """
    if dim is None or len(pieces) == 1:
        first = pieces[0]
        for i, other in enumerate(pieces[1:], start=1):
            if other.shape != first.shape or not torch.equal(other, first):
                raise CheckpointError(f"{name}: replicated tensor differs between shard 0 and shard {i}")
        return first
    shapes = {tuple(p.shape[:dim]) + tuple(p.shape[dim + 1:]) for p in pieces}
    if len(shapes) != 1:
        raise CheckpointError(f"{name}: shards do not line up: shapes {[tuple(p.shape) for p in pieces]}")
    return torch.cat(pieces, dim=dim)


def split_for_model_parallel(tensor: torch.Tensor, dim: Optional[int], n: int) -> list[torch.Tensor]:
    """The ``n`` model-parallel slices of a full tensor, as fairscale stores them (the inverse of
    :func:`merge_shards`); replicated tensors are copied."""
    if dim is None:
        return [tensor.clone() for _ in range(n)]
    if tensor.shape[dim] % n:
        raise CheckpointError(f"dimension {dim} of size {tensor.shape[dim]} does not split into {n} shards")
    return [piece.clone() for piece in torch.chunk(tensor, n, dim=dim)]
