"""Packed-row attention: the path chosen per device, and every path equal to the per-sample loop.

The loop, masked and flex paths run here on CPU (flex forward only: FlexAttention has no CPU backward in
torch 2.13); the varlen kernel is CUDA-only: on CPU a stand-in kernel checks what the path hands it
(flattened rows, cumulative lengths, causal window, GQA), and the kernel itself is tested on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from mmtune.models.packed_attention import (
    PackedRows,
    cumulative_lengths,
    packed_attention_path,
    packed_rows,
    sample_segments,
    segment_attention,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
IDS = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, -1], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="varlen_attn is CUDA-only (GPU check)")


@pytest.mark.parametrize("device, dtype, compiled, length, path", [
    (CPU, torch.float32, False, 512, "loop"),
    (CPU, torch.float32, False, 511, "masked"),
    (CPU, torch.bfloat16, False, 2048, "loop"),
    (CPU, torch.float32, True, 2048, "masked"),
    (CUDA, torch.bfloat16, False, 64, "varlen"),
    (CUDA, torch.float16, False, 2048, "varlen"),
    (CUDA, torch.bfloat16, True, 2048, "flex"),
    (CUDA, torch.float32, True, 2048, "flex"),
    (CUDA, torch.float32, False, 2048, "loop"),
    (CUDA, torch.float32, False, 128, "masked"),
])
def test_one_function_picks_the_path_by_device_dtype_compile_and_length(device, dtype, compiled, length, path):
    assert packed_attention_path(device, dtype, compiled, length) == path


def test_ids_that_are_not_contiguous_runs_fall_back_to_the_mask_and_unknown_paths_are_refused():
    split = torch.tensor([[0, 1, 0, 1]])
    assert packed_rows(split, "loop").path == "masked"
    assert packed_rows(split, "varlen").path == "masked"
    with pytest.raises(ValueError, match="'dense' is not one of loop, masked, flex, varlen"):
        packed_rows(split, "dense")


def test_cumulative_lengths_lay_every_run_of_every_row_end_to_end():
    cu, longest = cumulative_lengths(sample_segments(IDS), 12, CPU)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 5, 9, 11, 12, 17, 24] and longest == 7


def _qkv(heads_kv: int, device=CPU, dtype=torch.float32, grad: bool = True) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 4, 12, 16), (2, heads_kv, 12, 16), (2, heads_kv, 12, 16)]
    return tuple(torch.randn(s, generator=gen).to(device, dtype).requires_grad_(grad) for s in shapes)


def _loop(q, k, v, ids):
    return segment_attention(q, k, v, sample_segments(ids), q.shape[1] != k.shape[1])


@pytest.mark.parametrize("heads_kv", [4, 2])
def test_masked_path_equals_the_loop_with_gradients(heads_kv):
    q, k, v = _qkv(heads_kv)
    rows = packed_rows(IDS, "masked")
    out, ref = rows.attend(q, k, v), _loop(q, k, v, IDS)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for g, r in zip(grads, torch.autograd.grad(ref.square().sum(), (q, k, v))):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads_kv", [4, 2])
def test_flex_path_equals_the_loop_on_cpu_forward(heads_kv):
    q, k, v = _qkv(heads_kv, grad=False)
    rows = packed_rows(IDS, "flex")
    assert isinstance(rows, PackedRows) and rows.block_mask is not None
    torch.testing.assert_close(rows.attend(q, k, v), _loop(q, k, v, IDS), rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("path", ["varlen", "flex"])
@pytest.mark.parametrize("heads_kv", [4, 2])
def test_cuda_paths_equal_the_loop_with_gradients_in_bf16(path, heads_kv):
    """bf16 on the path against the loop in fp32 on the same (bf16-rounded) inputs: outputs and input
    gradients within 2% of the largest reference magnitude."""
    q, k, v = _qkv(heads_kv, CUDA, torch.bfloat16)
    q32, k32, v32 = (z.detach().float().requires_grad_() for z in (q, k, v))
    out, ref = packed_rows(IDS.to(CUDA), path).attend(q, k, v), _loop(q32, k32, v32, IDS.to(CUDA))
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert (out.float() - ref).abs().max() <= 2e-2 * ref.abs().max()
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    for g, r in zip(grads, torch.autograd.grad(ref.square().sum(), (q32, k32, v32))):
        assert (g.float() - r).abs().max() <= 2e-2 * r.abs().max()


def test_varlen_path_flattens_the_rows_and_calls_the_kernel_with_the_runs(monkeypatch):
    """The CUDA kernel is replaced by a CPU stand-in that attends causally within each ``cu_seqlens`` run:
    the flattening, the cumulative lengths, causality and GQA reach the kernel as the kernel expects."""
    import torch.nn.attention.varlen as varlen_module
    import torch.nn.functional as F

    calls = []

    def stand_in(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size, enable_gqa):
        calls.append((cu_q.tolist(), cu_k is cu_q, max_q, max_k, window_size, enable_gqa, tuple(k.shape)))
        out = torch.empty_like(q)
        bounds = cu_q.tolist()
        for s, e in zip(bounds[:-1], bounds[1:]):
            run = [z[s:e].transpose(0, 1) for z in (q, k, v)]
            out[s:e] = F.scaled_dot_product_attention(*run, is_causal=True, enable_gqa=enable_gqa).transpose(0, 1)
        return out

    monkeypatch.setattr(varlen_module, "varlen_attn", stand_in)
    q, k, v = _qkv(2)
    out, ref = packed_rows(IDS, "varlen").attend(q, k, v), _loop(q, k, v, IDS)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for g, r in zip(grads, torch.autograd.grad(ref.square().sum(), (q, k, v))):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    assert calls == [([0, 3, 5, 9, 11, 12, 17, 24], True, 7, 7, (-1, 0), True, (24, 2, 16))]


def test_the_decoder_gives_the_same_logits_and_gradients_on_each_cpu_path(monkeypatch):
    import mmtune.models.llama as llama
    from mmtune.config import ModelConfig

    torch.manual_seed(0)
    model = llama.Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97,
                                          max_seq_len=12))
    model.init_weights()
    tokens = torch.randint(0, 97, IDS.shape)
    results = []
    for path in ("loop", "masked"):
        monkeypatch.setattr(llama, "packed_attention_path", lambda *a, chosen=path: chosen)
        model.zero_grad()
        logits = model(tokens, sample_ids=IDS)
        logits.square().mean().backward()
        results.append((logits.detach(), model.layers[0].attention.wk.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_compiled_block_on_the_flex_path_equals_the_loop_without_recompiling_per_packing(monkeypatch):
    """A decoder block compiled in place (as on CUDA, where compiled blocks take FlexAttention), forward on
    CPU: q/k come out of RoPE's view_as_real, which inductor's flex lowering could not take before they
    were made contiguous; a new block mask per forward pass (another packing) reuses the compiled code."""
    import torch._dynamo

    from mmtune.config import ModelConfig
    from mmtune.models.llama import Transformer, rope_rotation

    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=97, max_seq_len=48))
    model.init_weights()
    block, t = model.layers[0], 48
    x, positions = torch.randn(2, t, 64), torch.arange(t).expand(2, t)
    rotation = rope_rotation(model.rope_cos[positions], model.rope_sin[positions])

    def ids(cut: int) -> torch.Tensor:
        return torch.tensor([[0] * cut + [1] * (t - cut - 2) + [-1] * 2, [0] * t])

    with torch.no_grad():
        expected = {cut: block(x, rotation, packed_rows(ids(cut), "loop")) for cut in (20, 13)}
        block.compile()
        for cut in (20, 13, 20):
            torch.testing.assert_close(block(x, rotation, packed_rows(ids(cut), "flex")), expected[cut],
                                       rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


@needs_cuda
def test_on_cuda_the_decoder_takes_varlen_eager_and_flex_compiled_with_the_loop_s_logits():
    from mmtune.config import ModelConfig
    from mmtune.models.llama import Transformer

    torch.manual_seed(0)
    with torch.device(CUDA):
        model = Transformer(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, max_seq_len=12))
    model.init_weights()
    model.to(torch.bfloat16)
    tokens, ids = torch.randint(0, 97, IDS.shape, device=CUDA), IDS.to(CUDA)
    with torch.no_grad():
        eager = model(tokens, sample_ids=ids)
        for layer in model.layers:
            layer.compile()
        compiled = model(tokens, sample_ids=ids)
    assert packed_attention_path(CUDA, torch.bfloat16, False, 12) == "varlen"
    assert packed_attention_path(CUDA, torch.bfloat16, True, 12) == "flex"
    torch.testing.assert_close(compiled.float(), eager.float(), rtol=3e-2, atol=3e-2)
