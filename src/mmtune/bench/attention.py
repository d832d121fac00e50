"""Packed-row attention benchmark: one masked SDPA call against the loop over each row's samples.

For each row length, a batch of about ``positions`` positions is cut into rows of that length, and each
row is filled with samples of random lengths around ``sample_len`` (the last one cut at the row's end,
two padding positions at the end of every row). Forward + backward of the attention alone, timed in
turn (:func:`~mmtune.bench.timing.interleaved_medians`):

* ``loop``: :func:`~mmtune.models.packed_attention.segment_attention`, causal SDPA on each sample run;
* ``masked``: one SDPA call with :func:`~mmtune.models.packed_attention.packed_mask`'s boolean mask.

Both compute exactly the same thing (tests/test_bench_fastpaths.py); the decoder picks the loop for rows
of at least :data:`~mmtune.models.packed_attention.SEGMENT_LOOP_MIN_LEN` positions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from mmtune.bench.timing import interleaved_medians
from mmtune.models.packed_attention import SEGMENT_LOOP_MIN_LEN, packed_mask, sample_segments, segment_attention


@dataclass
class AttentionBenchResult:
    """Median forward + backward time of both attention paths for one row length."""

    name: str
    rows: int
    samples_per_row: float
    loop_ms: float
    masked_ms: float
    decoder_uses: str


def packed_sample_ids(rows: int, length: int, sample_len: int, rng: random.Random) -> torch.Tensor:
    """[rows, length] sample ids: runs of about ``sample_len`` (half to 1.5 times), then 2 padding."""
    ids = torch.full((rows, length), -1, dtype=torch.long)
    for row in range(rows):
        start, sample = 0, 0
        while start < length - 2:
            n = min(rng.randint(max(1, sample_len // 2), max(1, sample_len * 3 // 2)), length - 2 - start)
            ids[row, start:start + n] = sample
            start, sample = start + n, sample + 1
    return ids


def run_attention_bench(lengths: Sequence[int], *, positions: int, sample_len: int, heads: int,
                        head_dim: int, repeats: int, seed: int) -> list[AttentionBenchResult]:
    """One result per row length in ``lengths`` (see the module docstring)."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for length in lengths:
        rows = max(1, positions // length)
        ids = packed_sample_ids(rows, length, sample_len, rng)
        q, k, v = (torch.randn(rows, heads, length, head_dim, generator=gen, requires_grad=True)
                   for _ in range(3))
        segments = sample_segments(ids)
        mask = packed_mask(ids)

        def loop() -> None:
            segment_attention(q, k, v, segments, False).sum().backward()

        def masked() -> None:
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()

        loop_s, masked_s = interleaved_medians([loop, masked], repeats)
        out.append(AttentionBenchResult(
            f"rows of {length}", rows, round(sum(len(r) for r in segments) / rows, 1), loop_s * 1e3,
            masked_s * 1e3, "loop" if length >= SEGMENT_LOOP_MIN_LEN else "masked"))
    return out
