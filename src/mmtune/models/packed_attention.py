"""Attention over packed rows (several samples per row, kept apart by ``sample_ids``), by device.

:func:`packed_attention_path` is the one place that picks how a packed row attends; each path computes
causal attention within each sample (padding, id ``-1``, only sees padding) and all give the per-sample
loop's result (tests/test_packed_attention.py):

* ``varlen`` (CUDA, bf16/fp16, eager blocks): ``torch.nn.attention.varlen.varlen_attn``, flash attention
  over the flattened rows with cumulative sequence lengths from the sample runs; grouped-query heads are
  passed as they are (``enable_gqa``), nothing is repeated.
* ``flex`` (CUDA, compiled blocks): FlexAttention with a document-causal :class:`BlockMask` built once
  per forward pass; GQA through ``enable_gqa``. (FlexAttention has no CPU backward in torch 2.13.)
* ``loop`` (CPU, eager, rows of at least :data:`SEGMENT_LOOP_MIN_LEN`): causal SDPA on each sample run,
  so a row costs the sum of its samples' squared lengths; below ~512 positions the per-call cost exceeds
  the attention it saves (docs/benchmarks.md).
* ``masked`` (otherwise: short rows, compiled blocks on CPU, ids that are not contiguous runs, fp32 on
  CUDA): one SDPA call with the dense ``[T, T]`` boolean mask; the KV heads are repeated for GQA, since
  SDPA's GQA runs only in kernels that take no mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

SEGMENT_LOOP_MIN_LEN = 512
"""Packed rows this long or longer attend sample by sample on CPU; shorter ones with one masked call."""

PATHS = ("loop", "masked", "flex", "varlen")

Segments = tuple[tuple[tuple[int, int], ...], ...]
"""Per row, the ``(start, end)`` of each run of one sample id (padding is a run of its own)."""


def packed_attention_path(device: torch.device, dtype: torch.dtype, compiled: bool, length: int) -> str:
    """The path (one of :data:`PATHS`) a packed row of ``length`` positions takes; see the module docstring.

    The loop, flex and varlen paths also need the ids to be contiguous runs (else ``masked``): that is
    decided by :func:`packed_rows`, which reads them.
    """
    if device.type == "cuda":
        if compiled:
            return "flex"
        if dtype in (torch.bfloat16, torch.float16):
            return "varlen"
    if compiled:
        return "masked"
    return "loop" if length >= SEGMENT_LOOP_MIN_LEN else "masked"


def blocks_compiled(layers: nn.ModuleList) -> bool:
    """True when a block was compiled in place (segment bounds would recompile it per packing layout)."""
    return any(getattr(layer, "_compiled_call_impl", None) is not None for layer in layers)


def packed_mask(sample_ids: torch.Tensor) -> torch.Tensor:
    """The boolean mask [B, 1, T, T] (True = attend): causal AND same sample id."""
    t = sample_ids.shape[1]
    at = torch.arange(t, device=sample_ids.device)
    causal = at[None, :] <= at[:, None]
    return (causal & (sample_ids[:, :, None] == sample_ids[:, None, :])).unsqueeze(1)


def sample_segments(sample_ids: torch.Tensor) -> Optional[Segments]:
    """The runs of equal ids of each row when every id of a row is one contiguous run (the packed
    layout), else None. Reads the ids' run starts to the host once."""
    b, t = sample_ids.shape
    change = torch.ones_like(sample_ids, dtype=torch.bool)
    change[:, 1:] = sample_ids[:, 1:] != sample_ids[:, :-1]
    rows, starts = change.nonzero(as_tuple=True)
    runs = torch.stack([rows, starts, sample_ids[rows, starts]]).tolist()
    bounds: list[list[tuple[int, int]]] = [[] for _ in range(b)]
    seen: set[tuple[int, int]] = set()
    for i, (row, start, sid) in enumerate(zip(*runs)):
        if (row, sid) in seen:
            return None
        seen.add((row, sid))
        end = runs[1][i + 1] if i + 1 < len(runs[0]) and runs[0][i + 1] == row else t
        bounds[row].append((start, end))
    return tuple(tuple(r) for r in bounds)


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments,
                      gqa: bool) -> torch.Tensor:
    """Causal attention [B, H, T, D] within each segment of each row (the packed-sample mask, exactly)."""
    rows = []
    for b, row in enumerate(segments):
        parts = [F.scaled_dot_product_attention(q[b:b + 1, :, s:e], k[b:b + 1, :, s:e], v[b:b + 1, :, s:e],
                                                is_causal=True, enable_gqa=gqa) for s, e in row]
        rows.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    return torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SDPA [B, H, T, D] with a boolean ``mask``; KV heads are repeated for GQA (masked kernels lack it)."""
    if q.shape[1] != k.shape[1]:
        repeats = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def cumulative_lengths(segments: Segments, length: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """``cu_seqlens`` (int32, [runs + 1]) of every run of every row laid end to end, and the longest run."""
    starts = [b * length + s for b, row in enumerate(segments) for s, _ in row]
    longest = max(e - s for row in segments for s, e in row)
    cu = torch.tensor(starts + [len(segments) * length], dtype=torch.int32, device=device)
    return cu, longest


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                     longest: int) -> torch.Tensor:
    """Flash varlen attention [B, H, T, D] over the rows flattened to one sequence of runs (CUDA only)."""
    from torch.nn.attention.varlen import varlen_attn

    b, h, t, d = q.shape
    flat = [z.transpose(1, 2).reshape(b * t, z.shape[1], d) for z in (q, k, v)]
    out = varlen_attn(*flat, cu, cu, longest, longest, window_size=(-1, 0), enable_gqa=h != k.shape[1])
    return out.view(b, t, h, d).transpose(1, 2)


def document_block_mask(sample_ids: torch.Tensor) -> Any:
    """FlexAttention's document-causal :class:`BlockMask` for ``sample_ids`` [B, T]."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_sample_causal(b, h, q_at, kv_at):
        return (sample_ids[b, q_at] == sample_ids[b, kv_at]) & (kv_at <= q_at)

    b, t = sample_ids.shape
    return create_block_mask(same_sample_causal, b, None, t, t, device=sample_ids.device)


def flex_packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any) -> torch.Tensor:
    """FlexAttention [B, H, T, D] under ``block_mask`` (:func:`document_block_mask`), GQA unrepeated.

    The inputs are made contiguous first: inside a compiled block, q and k come out of RoPE's
    ``view_as_real`` as reinterpreted 5-d buffers, which inductor's FlexAttention lowering cannot
    unpack (torch 2.13: "too many values to unpack"; tests/test_packed_attention.py)."""
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = (z.contiguous() for z in (q, k, v))
    return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


@dataclass(frozen=True)
class PackedRows:
    """What every layer needs to attend over one batch of packed rows along one path (built once per
    forward pass by :func:`packed_rows`)."""

    path: str
    segments: Optional[Segments] = None
    mask: Optional[torch.Tensor] = None
    block_mask: Any = None
    cu_seqlens: Optional[torch.Tensor] = None
    longest: int = 0

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention [B, H, T, D] of ``q`` [B, H, T, D] over ``k``/``v`` [B, H_kv, T, D]."""
        if self.path == "loop":
            return segment_attention(q, k, v, self.segments, q.shape[1] != k.shape[1])
        if self.path == "varlen":
            return varlen_attention(q, k, v, self.cu_seqlens, self.longest)
        if self.path == "flex":
            return flex_packed_attention(q, k, v, self.block_mask)
        return masked_attention(q, k, v, self.mask)


def packed_rows(sample_ids: torch.Tensor, path: str) -> PackedRows:
    """The :class:`PackedRows` for ``sample_ids`` [B, T] along ``path`` (:func:`packed_attention_path`),
    or along ``masked`` when a loop or varlen path meets ids that are not contiguous runs."""
    if path not in PATHS:
        raise ValueError(f"packed attention path {path!r} is not one of {', '.join(PATHS)}")
    if path == "flex":
        return PackedRows(path, block_mask=document_block_mask(sample_ids))
    segments = sample_segments(sample_ids) if path in ("loop", "varlen") else None
    if segments is None:
        return PackedRows("masked", mask=packed_mask(sample_ids))
    if path == "loop":
        return PackedRows(path, segments=segments)
    cu, longest = cumulative_lengths(segments, sample_ids.shape[1], sample_ids.device)
    return PackedRows(path, cu_seqlens=cu, longest=longest)
