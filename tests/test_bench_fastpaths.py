"""Generation fast paths: SDPA runs without a mask where that is exact, and gives the masked results."""

from __future__ import annotations

import pytest
import torch

from mmtune.config import ModelConfig
from mmtune.models.generate import SamplingParams, generate
from mmtune.models.llama import KVCache, Transformer, attention_mask

CFG = {"mha": ModelConfig(dim=64, n_layers=2, n_heads=4, vocab_size=97, max_seq_len=64),
       "gqa": ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, max_seq_len=64)}


def _model(name: str) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(CFG[name])
    model.init_weights()
    return model.eval()


def test_masks_are_dropped_only_while_the_cache_holds_no_padding():
    cache = KVCache(1, 2, 2, 8, 16)
    cache.reserve(5, torch.zeros(2, 5, dtype=torch.long))
    assert not cache.padded and attention_mask(5, None, cache, torch.device("cpu")) is None  # causal prefill
    cache.advance(5)
    cache.reserve(1, None)
    assert attention_mask(1, None, cache, torch.device("cpu")) is None  # one query sees every key
    cache.advance(1)
    cache.reserve(3, None)
    assert attention_mask(3, None, cache, torch.device("cpu")).shape == (2, 1, 3, 9)  # a later block: causal mask
    padded = KVCache(1, 2, 2, 8, 16)
    padded.reserve(4, torch.tensor([[-1, 0, 0, 0], [0, 0, 0, 0]]))
    assert padded.padded and attention_mask(4, None, padded, torch.device("cpu")) is not None
    padded.advance(4)
    padded.reserve(1, None)
    assert padded.padded and attention_mask(1, None, padded, torch.device("cpu")) is not None


@pytest.mark.parametrize("name", ["mha", "gqa"])
def test_mask_free_prefill_and_decode_equal_the_masked_path(name):
    model = _model(name)
    tokens = torch.randint(0, 97, (2, 10))
    fast, masked = KVCache.for_model(model, 2, 16), KVCache.for_model(model, 2, 16)
    masked.padded = True  # forces the boolean-mask path with the same (all valid) keys
    with torch.no_grad():
        outs = [model(tokens[:, :7], cache=c) for c in (fast, masked)]
        assert (outs[0] - outs[1]).abs().max() <= 1e-5
        for i in range(7, 10):
            step = [model(tokens[:, i:i + 1], cache=c) for c in (fast, masked)]
            assert (step[0] - step[1]).abs().max() <= 1e-5
    assert not fast.padded


def test_greedy_batches_with_and_without_padding_agree_with_single_rows():
    model = _model("gqa")
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [3, 4]]
    params = SamplingParams(max_new_tokens=6)
    equal = generate(model, prompts[:2], params=params)  # no padding: mask-free prefill and decode
    mixed = generate(model, prompts, params=params)  # left padding: masked
    singles = [generate(model, [p], params=params)[0] for p in prompts]
    assert equal == singles[:2] and mixed == singles


def test_generation_stops_rows_and_streams_with_one_read_per_step():
    model = _model("mha")
    free = generate(model, [[5, 6, 7]], params=SamplingParams(max_new_tokens=8))[0]
    stop = free[3]
    seen: list[tuple[int, int]] = []
    out = generate(model, [[5, 6, 7], [5, 6, 7]], params=SamplingParams(max_new_tokens=8, stop_ids=[stop]),
                   on_token=lambda row, token: seen.append((row, token)))
    cut = free[:free.index(stop)]
    assert out == [cut, cut]
    assert [t for r, t in seen if r == 0] == cut and len(seen) == 2 * len(cut)


def test_sample_segments_read_contiguous_runs_and_refuse_split_ids():
    from mmtune.models.packed_attention import sample_segments

    ids = torch.tensor([[0, 0, 1, 1, 1, 2, -1, -1], [0] * 8])
    assert sample_segments(ids) == (((0, 2), (2, 5), (5, 6), (6, 8)), ((0, 8),))
    assert sample_segments(torch.tensor([[0, 1, 0]])) is None


@pytest.mark.parametrize("name", ["mha", "gqa"])
def test_packed_rows_attend_sample_by_sample_like_the_mask(name):
    from mmtune.models.llama import attention_mask
    from mmtune.models.packed_attention import sample_segments, segment_attention

    gen = torch.Generator().manual_seed(0)
    heads_kv = 2 if name == "gqa" else 4
    q = torch.randn(2, 4, 9, 8, generator=gen, requires_grad=True)
    k = torch.randn(2, heads_kv, 9, 8, generator=gen, requires_grad=True)
    v = torch.randn(2, heads_kv, 9, 8, generator=gen, requires_grad=True)
    ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, -1], [0, 0, 0, 0, 1, 1, 1, 1, 1]])
    fast = segment_attention(q, k, v, sample_segments(ids), heads_kv != 4)
    rep = 4 // heads_kv
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=attention_mask(9, ids, None, q.device))
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(fast.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_bench_runs_of_both_sides_produce_the_same_greedy_tokens():
    from mmtune.bench.generate import hf_causal_lm, mmtune_run, transformers_run
    from mmtune.bench.timing import interleaved_medians

    model = _model("gqa")
    prompts = torch.randint(3, 97, (3, 6)).tolist()
    ours = mmtune_run(model, prompts, 5)()
    theirs = transformers_run(hf_causal_lm(model), prompts, 5)()
    assert theirs[:, 6:].tolist() == ours
    calls: list[str] = []
    medians = interleaved_medians([lambda: calls.append("a"), lambda: calls.append("b")], repeats=2)
    assert calls == ["a", "b", "a", "b", "a", "b"] and len(medians) == 2


@pytest.mark.parametrize("length", [40, 520])
def test_short_packed_rows_take_one_masked_call_and_long_ones_loop_with_the_same_result(length, monkeypatch):
    import mmtune.models.packed_attention as llama

    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=97, max_seq_len=length))
    model.init_weights()
    tokens = torch.randint(0, 97, (2, length))
    cut = length // 3
    ids = torch.tensor([[0] * cut + [1] * (length - cut - 2) + [-1] * 2, [0] * length])
    positions = torch.cat([torch.arange(cut), torch.arange(length - cut)]).expand(2, -1).clone()
    positions[1] = torch.arange(length)
    loops = []
    real = llama.segment_attention
    monkeypatch.setattr(llama, "segment_attention", lambda *a: loops.append(1) or real(*a))
    auto = model(tokens, positions=positions, sample_ids=ids)
    assert len(loops) == (2 if length >= llama.SEGMENT_LOOP_MIN_LEN else 0)  # one per layer, or none
    monkeypatch.setattr(llama, "SEGMENT_LOOP_MIN_LEN", 1 if not loops else 10**6)
    other = model(tokens, positions=positions, sample_ids=ids)
    assert len(loops) == 2
    torch.testing.assert_close(auto, other, rtol=1e-5, atol=1e-5)


def test_attention_bench_times_both_paths_and_names_the_one_the_decoder_takes():
    import random

    from mmtune.bench.attention import packed_sample_ids, run_attention_bench

    ids = packed_sample_ids(3, 20, 4, random.Random(0))
    assert (ids[:, -2:] == -1).all() and (ids[:, :-2] >= 0).all() and int(ids.max()) >= 3
    rows = run_attention_bench([8, 600], positions=1200, sample_len=5, heads=2, head_dim=4, repeats=1, seed=0)
    assert [(r.rows, r.decoder_uses) for r in rows] == [(150, "masked"), (2, "loop")]
    assert all(r.loop_ms > 0 and r.masked_ms > 0 for r in rows)


def test_attention_bench_refuses_bad_lengths(capsys):
    from mmtune.cli import main

    assert main(["bench", "attention", "--lengths", "128,x"]) == 2
    assert "--lengths" in capsys.readouterr().err
