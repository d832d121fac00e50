"""The LLaMA-family decoder with Meta's parameter names, packed-sample attention and a KV cache.

One :class:`Transformer` covers LLaMA 1/2/3, Mistral (without sliding windows) and Qwen2 (``qkv_bias``):
RMSNorm, SwiGLU, RoPE on Meta's interleaved pairs (optionally with Llama-3 frequency scaling), grouped-
query attention and ``F.scaled_dot_product_attention``.

Attention follows the batch contract of ``docs/architecture.md``: ``positions`` feed RoPE and
``sample_ids`` keep packed samples apart (causal AND same sample; ``-1`` marks padding). SDPA's
mask-free kernels run wherever they are exact: with neither sample ids nor a cache (``is_causal``), for a
prefill into an empty cache without padding (``is_causal``), and for one-token decoding while the cache
holds no padding (every cached key is visible: no mask at all). Packed rows attend along the path that
:func:`mmtune.models.packed_attention.packed_attention_path` picks for the device (flash varlen or
FlexAttention on CUDA; the per-sample loop or one masked call on CPU).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from mmtune.config import ModelConfig
from mmtune.models.packed_attention import (
    PackedRows,
    blocks_compiled,
    masked_attention,
    packed_attention_path,
    packed_mask,
    packed_rows,
)


def ffn_hidden_dim(cfg: ModelConfig) -> int:
    """The SwiGLU hidden size: ``cfg.ffn_hidden_dim`` when set, else Meta's rule.

    Meta's rule: ``4 * dim``, times 2/3 (truncated), times ``ffn_dim_multiplier`` (truncated), rounded up
    to a multiple of ``multiple_of``.
    """
    if cfg.ffn_hidden_dim is not None:
        return cfg.ffn_hidden_dim
    hidden = int(2 * (4 * cfg.dim) / 3)
    if cfg.ffn_dim_multiplier is not None:
        hidden = int(cfg.ffn_dim_multiplier * hidden)
    return cfg.multiple_of * ((hidden + cfg.multiple_of - 1) // cfg.multiple_of)


def rope_frequencies(cfg: ModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse RoPE frequencies ``[head_dim / 2]`` in fp32, with Llama-3 scaling when configured."""
    head_dim = cfg.dim // cfg.n_heads
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** exponents)
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = ((scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotates Meta's interleaved pairs ``(x[2i], x[2i+1])`` of ``x`` [B, T, H, D] by ``rotation``
    [B, T, D/2], the unit complex numbers ``cos + i sin`` of the angles (:func:`rope_rotation`).

    The pairs are read as complex numbers, so the rotation is one complex multiply in fp32; the
    result is cast back to ``x``'s dtype.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation.unsqueeze(2)).flatten(-2).type_as(x)


def rope_rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The complex rotation ``cos + i sin`` that :func:`apply_rope` multiplies by (built once per pass)."""
    return torch.complex(cos, sin)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in fp32 (as Meta and Hugging Face do)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises the last dimension of ``x`` and scales it by ``weight``."""
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.type_as(x)

    def reset_parameters(self) -> None:
        """Sets the scale back to ones."""
        nn.init.ones_(self.weight)


class KVCache:
    """Per-layer key/value buffers ``[B, n_kv_heads, max_len, head_dim]`` for incremental decoding.

    ``length`` is how many positions are filled (the same for every row: batches are left-padded) and
    ``valid`` [B, max_len] says which cached keys may be attended to (padding is not); ``padded`` turns
    True once a reserved position was padding (attention then needs the mask). A forward pass
    with the cache reserves its positions (:meth:`reserve`), each layer appends through
    :meth:`update`, and the pass ends with :meth:`advance`.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, max_len: int,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0
        self.padded = False

    @classmethod
    def for_model(cls, model: "Transformer", batch_size: int, max_len: Optional[int] = None) -> "KVCache":
        """A cache matching ``model``'s layers, heads, device and dtype (``max_len`` defaults to
        ``cfg.max_seq_len``)."""
        cfg = model.cfg
        weight = model.tok_embeddings.weight
        return cls(cfg.n_layers, batch_size, cfg.n_kv_heads or cfg.n_heads, cfg.dim // cfg.n_heads,
                   max_len or cfg.max_seq_len, device=weight.device, dtype=weight.dtype)

    def reserve(self, n: int, sample_ids: Optional[torch.Tensor]) -> None:
        """Marks the next ``n`` positions valid where ``sample_ids >= 0`` (all of them when None)."""
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.length} used, {n} more asked")
        span = slice(self.length, self.length + n)
        if sample_ids is None:
            self.valid[:, span] = True
            return
        keep = sample_ids >= 0
        self.valid[:, span] = keep
        self.padded = self.padded or not bool(keep.all())

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes ``k``/``v`` [B, H_kv, T, D] after the filled positions; returns all keys/values so far."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Counts ``n`` more positions as filled (called once per forward pass, after all layers)."""
        self.length += n


def attention_mask(n: int, sample_ids: Optional[torch.Tensor], cache: Optional[KVCache],
                   device: torch.device) -> Optional[torch.Tensor]:
    """The boolean mask [B, 1, n, keys] (True = attend) for ``n`` new queries, or None where no mask is
    needed: causal attention without sample ids or cache, and, while the cache holds no padding, a
    prefill into the empty cache (causal) or one new query (it sees every key).

    Without a cache: causal AND same sample id (padding, id -1, only sees padding, so no row is empty).
    With a cache (after :meth:`KVCache.reserve` for these queries): causal over everything cached,
    restricted to valid keys; every query also sees itself, so left-padding positions stay finite.
    """
    if cache is None and sample_ids is None:
        return None
    start = 0 if cache is None else cache.length
    if cache is not None and not cache.padded and (start == 0 or n == 1):
        return None
    query_at = torch.arange(start, start + n, device=device)[:, None]
    key_at = torch.arange(start + n, device=device)[None, :]
    causal = key_at <= query_at
    if cache is None:
        return packed_mask(sample_ids)
    valid = cache.valid[:, None, None, :start + n]
    return (causal & valid) | (key_at == query_at)


def one_sample_per_row(sample_ids: torch.Tensor) -> bool:
    """True when each row holds one sample from position 0, then only padding (id -1): the padded-batch
    layout, where plain causal attention gives every real token exactly the packed-sample result (padding
    positions see the sample too, but they are never supervised). Reads one flag to the host."""
    real = sample_ids >= 0
    same = (sample_ids == sample_ids[:, :1]) | ~real
    return bool((same.all() & real[:, 0].all() & (real[:, 1:] <= real[:, :-1]).all()).item())


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads, RoPE and an optional KV cache."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.wq = nn.Linear(cfg.dim, self.n_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor,
                mask: Union[torch.Tensor, PackedRows, None], cache: Optional[KVCache] = None) -> torch.Tensor:
        """``x`` [B, T, dim] -> [B, T, dim] with RoPE ``rotation`` [B, T, head_dim / 2]; heads are inferred
        from the projections' widths. ``mask`` is a boolean mask, packed rows (:class:`PackedRows`, which
        attend along their path), or None (see :func:`attention_mask`)."""
        b, t, _ = x.shape
        q = apply_rope(self.wq(x).view(b, t, -1, self.head_dim), rotation)
        k = apply_rope(self.wk(x).view(b, t, -1, self.head_dim), rotation)
        v = self.wv(x).view(b, t, -1, self.head_dim)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, heads, T, head_dim)
        if cache is not None:
            k, v = cache.update(self.layer_id, k, v)
        if isinstance(mask, PackedRows):
            out = mask.attend(q, k, v)
        elif mask is not None:
            out = masked_attention(q, k, v, mask)
        else:
            causal = q.shape[2] == k.shape[2]
            assert causal or q.shape[2] == 1, "a mask-free query block must start at key 0"
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the gated MLP to ``x`` [..., dim]."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm decoder block: attention then SwiGLU, each with a residual connection."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.attention = Attention(cfg, layer_id)
        self.feed_forward = FeedForward(cfg.dim, ffn_hidden_dim(cfg))
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor, rotation: torch.Tensor,
                mask: Union[torch.Tensor, PackedRows, None], cache: Optional[KVCache] = None) -> torch.Tensor:
        """``x`` [B, T, dim] -> [B, T, dim] (``rotation``: see :func:`rope_rotation`)."""
        h = x + self.attention(self.attention_norm(x), rotation, mask, cache)
        return h + self.feed_forward(self.ffn_norm(h))


@torch.no_grad()
def init_decoder_module(module: nn.Module, n_layers: int, std: float = 0.02, prefix: str = "") -> None:
    """Fresh weights for ``module``, the whole decoder or one part of it named ``prefix`` (``layers.3``):
    normal(0, std) matrices and embeddings, each block's output projections (``attention.wo``,
    ``feed_forward.w2``) with std scaled by ``1 / sqrt(2 * n_layers)``, zero biases, unit norms."""
    out_std = std / math.sqrt(2 * n_layers)
    for name, sub in module.named_modules(prefix=prefix):
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            deep = name.endswith(("attention.wo", "feed_forward.w2"))
            nn.init.normal_(sub.weight, mean=0.0, std=out_std if deep else std)
            if getattr(sub, "bias", None) is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, RMSNorm):
            sub.reset_parameters()


class Transformer(nn.Module):
    """The LLaMA-family decoder; parameter names follow Meta's release (see the module docstring).

    The RoPE tables ``rope_cos``/``rope_sin`` [max_seq_len, head_dim / 2] are non-persistent fp32
    buffers: they stay fp32 when the weights are cast, and :meth:`init_buffers` rebuilds them after a
    meta-device build and ``to_empty``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        half = cfg.dim // cfg.n_heads // 2
        self.register_buffer("rope_cos", torch.empty(cfg.max_seq_len, half), persistent=False)
        self.register_buffer("rope_sin", torch.empty(cfg.max_seq_len, half), persistent=False)
        self.init_buffers(self.rope_cos.device)

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)computes the fp32 RoPE tables on ``device`` (default: where the weights are)."""
        device = device if device is not None else self.tok_embeddings.weight.device
        inv_freq = rope_frequencies(self.cfg, device)
        angles = torch.outer(torch.arange(self.cfg.max_seq_len, device=device).float(), inv_freq)
        self.rope_cos = angles.cos()
        self.rope_sin = angles.sin()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "Transformer":
        """Casts like ``nn.Module`` but rebuilds the RoPE tables in fp32 when a cast changed them."""
        super()._apply(fn, recurse)
        if self.rope_cos.dtype != torch.float32:
            self.init_buffers(self.rope_cos.device)
        return self

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Fresh initialisation of every weight (:func:`init_decoder_module`); also rebuilds RoPE tables."""
        init_decoder_module(self, self.cfg.n_layers, std)
        self.init_buffers()

    def forward(self, tokens: Optional[torch.Tensor] = None, *, embeds: Optional[torch.Tensor] = None,
                positions: Optional[torch.Tensor] = None, sample_ids: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None, return_hidden: bool = False) -> torch.Tensor:
        """Runs the decoder on ``tokens`` [B, T] or ``embeds`` [B, T, dim].

        ``positions`` [B, T] index the RoPE tables (default: 0.., or continuing after the cache);
        ``sample_ids`` [B, T] keep packed samples apart (-1 = padding). With ``cache`` the new keys and
        values are appended and attention covers every valid cached key. Returns logits [B, T, vocab],
        or with ``return_hidden`` the final-norm hidden states [B, T, dim] (``self.output`` maps them
        to logits).
        """
        if (tokens is None) == (embeds is None):
            raise ValueError("Transformer.forward takes exactly one of tokens or embeds")
        h = self.tok_embeddings(tokens) if embeds is None else embeds
        b, t = h.shape[:2]
        start = 0 if cache is None else cache.length
        if positions is None:
            if start + t > self.cfg.max_seq_len:
                raise ValueError(f"sequence of {start + t} positions exceeds max_seq_len={self.cfg.max_seq_len}")
            positions = torch.arange(start, start + t, device=h.device).expand(b, t)
        rotation = rope_rotation(self.rope_cos[positions], self.rope_sin[positions])
        if cache is not None:
            cache.reserve(t, sample_ids)
        if cache is None and sample_ids is not None and one_sample_per_row(sample_ids):
            sample_ids = None  # causal attention is exact for every real token
        if cache is None and sample_ids is not None:
            path = packed_attention_path(h.device, h.dtype, blocks_compiled(self.layers), t)
            mask: Union[torch.Tensor, PackedRows, None] = packed_rows(sample_ids, path)
        else:
            mask = attention_mask(t, sample_ids, cache, h.device)
        for layer in self.layers:
            h = layer(h, rotation, mask, cache)
        if cache is not None:
            cache.advance(t)
        h = self.norm(h)
        return h if return_hidden else self.output(h)
