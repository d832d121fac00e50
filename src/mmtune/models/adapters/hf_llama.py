"""Hugging Face Llama / Mistral / Qwen2 <-> mmtune (Meta names): state dicts and configs.

Hugging Face rotates the two halves of each head (``rotate_half``) where Meta rotates interleaved
pairs, so the rows of ``wq``/``wk`` (and their biases) are permuted on the way; everything else is a
rename. ``to_hf_config`` returns keyword arguments for ``transformers.LlamaConfig`` (transformers 5:
RoPE settings live in ``rope_parameters``); ``from_hf_config`` reads a ``config.json`` dict of the
Llama, Mistral or Qwen2 families (old ``rope_scaling``/``rope_theta`` keys included).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from mmtune.config import ModelConfig, RopeScaling
from mmtune.errors import CheckpointError
from mmtune.models.llama import ffn_hidden_dim

log = logging.getLogger(__name__)

_GLOBAL_KEYS = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_KEYS = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_SUPPORTED = ("llama", "mistral", "qwen2")


def _key_map(cfg: ModelConfig) -> dict[str, str]:
    """mmtune name -> Hugging Face name for every parameter of a model built from ``cfg``."""
    names = dict(_GLOBAL_KEYS)
    for i in range(cfg.n_layers):
        for ours, theirs in _LAYER_KEYS.items():
            for kind in ("weight", "bias"):
                names[f"layers.{i}.{ours}.{kind}"] = f"model.layers.{i}.{theirs}.{kind}"
    return names


def _permute(t: torch.Tensor, n_heads: int, to_hf: bool) -> torch.Tensor:
    """Reorders the rows of each head between interleaved pairs (Meta) and halves (Hugging Face)."""
    rows = t.shape[0]
    half = rows // n_heads // 2
    split = (n_heads, half, 2) if to_hf else (n_heads, 2, half)
    return t.reshape(*split, *t.shape[1:]).transpose(1, 2).reshape(rows, *t.shape[1:])


def _heads_for(name: str, cfg: ModelConfig) -> int | None:
    """How many heads a q/k tensor holds, or None for tensors that are not rotated."""
    if ".attention.wq." in name:
        return cfg.n_heads
    if ".attention.wk." in name:
        return cfg.n_kv_heads or cfg.n_heads
    return None


def to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A :class:`~mmtune.models.llama.Transformer` state dict under Hugging Face Llama names."""
    names = _key_map(cfg)
    unknown = sorted(set(sd) - set(names))
    if unknown:
        raise CheckpointError(f"not a decoder state dict: unexpected keys {unknown[:5]}")
    out = {}
    for key, tensor in sd.items():
        heads = _heads_for(key, cfg)
        out[names[key]] = tensor if heads is None else _permute(tensor, heads, to_hf=True)
    return out


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A Hugging Face Llama-family state dict under mmtune names (rotary caches are dropped).

    With ``cfg.tie_embeddings`` a missing ``lm_head.weight`` is filled from the embedding.
    """
    names = {theirs: ours for ours, theirs in _key_map(cfg).items()}
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    unknown = sorted(set(sd) - set(names))
    if unknown:
        raise CheckpointError(f"not a Hugging Face Llama-family state dict: unexpected keys {unknown[:5]}")
    out = {}
    for key, tensor in sd.items():
        ours = names[key]
        heads = _heads_for(ours, cfg)
        out[ours] = tensor if heads is None else _permute(tensor, heads, to_hf=False)
    if cfg.tie_embeddings and "output.weight" not in out and "tok_embeddings.weight" in out:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """``transformers.LlamaConfig`` keyword arguments describing the same decoder."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope.update(rope_type="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor,
                    high_freq_factor=s.high_freq_factor,
                    original_max_position_embeddings=s.original_max_position_embeddings)
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=ffn_hidden_dim(cfg),
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads or cfg.n_heads, hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, rope_parameters=rope, attention_bias=cfg.qkv_bias,
        mlp_bias=False, head_dim=cfg.dim // cfg.n_heads,
    )


def _rope_from_hf(d: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """(rope_theta, Llama-3 scaling or None) from either the transformers 5 or the older layout."""
    rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    theta = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise CheckpointError(f"config.json: rope type {kind!r} is not supported (default or llama3)")
    scaling = RopeScaling(
        factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_position_embeddings=int(rope.get("original_max_position_embeddings",
                                                      d.get("max_position_embeddings", 8192))))
    return theta, scaling


def _check_hf_config(d: dict[str, Any]) -> None:
    """Refuses config.json features the decoder does not implement."""
    model_type = d.get("model_type", "llama")
    if model_type not in _SUPPORTED:
        raise CheckpointError(f"config.json: model_type {model_type!r} is not one of {', '.join(_SUPPORTED)}")
    if d.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json: hidden_act {d['hidden_act']!r} is not supported (silu)")
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim * d["num_attention_heads"] != d["hidden_size"]:
        raise CheckpointError(f"config.json: head_dim {head_dim} differs from hidden_size / num_attention_heads")
    if d.get("mlp_bias"):
        raise CheckpointError("config.json: mlp_bias is not supported")
    window = d.get("sliding_window")
    uses_window = d.get("use_sliding_window", model_type == "mistral")
    if window and uses_window and window < d.get("max_position_embeddings", 0):
        log.warning("config.json: sliding_window=%s is ignored; attention spans the whole context", window)


def from_hf_config(d: dict[str, Any]) -> ModelConfig:
    """A :class:`ModelConfig` from a Hugging Face Llama / Mistral / Qwen2 ``config.json`` dict."""
    _check_hf_config(d)
    theta, scaling = _rope_from_hf(d)
    qkv_bias = bool(d.get("attention_bias", d.get("model_type") == "qwen2"))
    return ModelConfig(
        dim=d["hidden_size"], n_layers=d["num_hidden_layers"], n_heads=d["num_attention_heads"],
        n_kv_heads=d.get("num_key_value_heads"), vocab_size=d["vocab_size"],
        ffn_hidden_dim=d["intermediate_size"], norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=theta, rope_scaling=scaling, max_seq_len=d.get("max_position_embeddings", 2048),
        qkv_bias=qkv_bias, tie_embeddings=bool(d.get("tie_word_embeddings", False)),
    )
