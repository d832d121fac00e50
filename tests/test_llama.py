"""Decoder: parity with transformers through the adapter, packed attention, KV cache, meta-device build."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers

from mmtune.config import ModelConfig, RopeScaling
from mmtune.errors import CheckpointError
from mmtune.models.adapters.hf_llama import from_hf_config, from_hf_state_dict, to_hf_config, to_hf_state_dict
from mmtune.models.llama import KVCache, Transformer, ffn_hidden_dim

VOCAB = 211

MHA = ModelConfig(dim=64, n_layers=2, n_heads=4, vocab_size=VOCAB, multiple_of=32, max_seq_len=128)
GQA = dataclasses.replace(MHA, n_heads=8, n_kv_heads=2, rope_theta=500000.0, ffn_dim_multiplier=1.3)
LLAMA3 = dataclasses.replace(  # head_dim 16: wavelengths 6.3 (kept), 19.9 (smoothed), 62.8+ (scaled)
    GQA, n_heads=4, rope_theta=10000.0, rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=32))
QWEN = dataclasses.replace(MHA, n_heads=4, n_kv_heads=2, qkv_bias=True, ffn_hidden_dim=96,
                           rope_theta=1000000.0, norm_eps=1e-6, tie_embeddings=True)


def random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A decoder whose every parameter (norms and biases included) is random and non-trivial."""
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
    return model.eval()


def hf_twin(model: Transformer, cls: type, config_cls: type) -> torch.nn.Module:
    kwargs = to_hf_config(model.cfg)
    if config_cls is transformers.Qwen2Config:
        for key in ("attention_bias", "mlp_bias", "head_dim"):
            kwargs.pop(key)
    hf = cls(config_cls(**kwargs, attn_implementation="eager")).eval()
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model.state_dict(), model.cfg), strict=False)
    assert not unexpected and not [k for k in missing if "rotary" not in k]
    return hf


@pytest.mark.parametrize("cfg", [MHA, GQA, LLAMA3], ids=["mha", "gqa", "llama3-rope"])
def test_logits_match_transformers_llama(cfg):
    model = random_model(cfg)
    hf = hf_twin(model, transformers.LlamaForCausalLM, transformers.LlamaConfig)
    tokens = torch.randint(0, VOCAB, (2, 100))  # positions past original_max_position_embeddings=32
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert ours.abs().max() > 0.1
    assert (ours - theirs).abs().max() <= 1e-5


def test_qkv_bias_matches_transformers_qwen2():
    model = random_model(QWEN)
    hf = hf_twin(model, transformers.Qwen2ForCausalLM, transformers.Qwen2Config)
    tokens = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("cfg", [MHA, GQA, LLAMA3, QWEN], ids=["mha", "gqa", "llama3-rope", "qwen"])
def test_round_trip_is_identity(cfg):
    sd = random_model(cfg).state_dict()
    back = from_hf_state_dict(to_hf_state_dict(sd, cfg), cfg)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    hf_config = to_hf_config(cfg)
    assert to_hf_config(from_hf_config(hf_config)) == hf_config
    assert from_hf_config(hf_config).rope_scaling == cfg.rope_scaling


def test_permutation_moves_rows_of_q_and_k_only():
    sd = random_model(GQA).state_dict()
    hf = to_hf_state_dict(sd, GQA)
    assert not torch.equal(hf["model.layers.0.self_attn.q_proj.weight"], sd["layers.0.attention.wq.weight"])
    assert torch.equal(hf["model.layers.0.self_attn.v_proj.weight"], sd["layers.0.attention.wv.weight"])
    # head 0 of Hugging Face's k: first half = Meta's even rows, second half = odd rows
    wk, hk = sd["layers.0.attention.wk.weight"], hf["model.layers.0.self_attn.k_proj.weight"]
    assert torch.equal(hk[:4], wk[0:8:2]) and torch.equal(hk[4:8], wk[1:8:2])


def test_from_hf_config_reads_llama3_mistral_and_qwen2():
    llama3 = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5,
                  max_position_embeddings=131072, rope_theta=500000.0, hidden_act="silu",
                  rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position_embeddings=8192))
    cfg = from_hf_config(llama3)
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.ffn_hidden_dim) == (500000.0, RopeScaling(), 14336)
    assert cfg.n_kv_heads == 8 and not cfg.qkv_bias and cfg.max_seq_len == 131072
    mistral = dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, sliding_window=None,
                   max_position_embeddings=32768, rope_theta=10000.0)
    assert from_hf_config(mistral).rope_scaling is None
    qwen = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                rope_theta=1000000.0, max_position_embeddings=32768)
    cfg = from_hf_config(qwen)
    assert cfg.qkv_bias and cfg.tie_embeddings and cfg.rope_theta == 1e6


@pytest.mark.parametrize("bad, message", [
    (dict(model_type="gpt2"), "model_type 'gpt2'"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
    (dict(rope_scaling=dict(rope_type="yarn", factor=4.0)), "rope type 'yarn'"),
    (dict(head_dim=32), "head_dim 32"),
])
def test_from_hf_config_refuses_what_it_cannot_build(bad, message):
    base = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, vocab_size=100)
    with pytest.raises(CheckpointError, match=message):
        from_hf_config({**base, **bad})


def test_unexpected_keys_are_refused():
    sd = random_model(MHA).state_dict()
    with pytest.raises(CheckpointError, match="vision.proj"):
        to_hf_state_dict({**sd, "vision.proj": torch.zeros(1)}, MHA)
    with pytest.raises(CheckpointError, match="model.mm_projector"):
        from_hf_state_dict({"model.mm_projector.weight": torch.zeros(1)}, MHA)


def test_meta_ffn_rule():
    assert ffn_hidden_dim(ModelConfig(dim=4096, multiple_of=256)) == 11008  # LLaMA-2-7B
    assert ffn_hidden_dim(ModelConfig(dim=8192, n_heads=64, multiple_of=4096,
                                      ffn_dim_multiplier=1.3)) == 28672  # LLaMA-2-70B
    assert ffn_hidden_dim(ModelConfig(dim=4096, multiple_of=1024, ffn_dim_multiplier=1.3)) == 14336
    assert ffn_hidden_dim(ModelConfig(dim=4096, ffn_hidden_dim=1000)) == 1000


def test_packed_samples_match_separate_runs():
    model = random_model(GQA)
    a, b = torch.randint(0, VOCAB, (1, 7)), torch.randint(0, VOCAB, (1, 5))
    packed = torch.cat([a, b, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    positions = torch.tensor([[*range(7), *range(5), 0, 0, 0]])
    sample_ids = torch.tensor([[0] * 7 + [1] * 5 + [-1] * 3])
    with torch.no_grad():
        out = model(packed, positions=positions, sample_ids=sample_ids)
        alone_a, alone_b = model(a), model(b)
    assert (out[:, :7] - alone_a).abs().max() <= 1e-5
    assert (out[:, 7:12] - alone_b).abs().max() <= 1e-5
    assert torch.isfinite(out).all()


def test_all_padding_row_is_finite_and_leaves_other_rows_alone():
    model = random_model(MHA)
    tokens = torch.randint(0, VOCAB, (2, 6))
    sample_ids = torch.tensor([[0] * 6, [-1] * 6])
    with torch.no_grad():
        out = model(tokens, sample_ids=sample_ids)
        assert torch.isfinite(out).all()
        assert (out[:1] - model(tokens[:1])).abs().max() <= 1e-5


def test_packed_gradients_stay_within_their_sample():
    model = random_model(MHA)
    embeds = torch.randn(1, 8, MHA.dim, requires_grad=True)
    sample_ids = torch.tensor([[0] * 4 + [1] * 4])
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    model(embeds=embeds, positions=positions, sample_ids=sample_ids)[0, 4:].sum().backward()
    assert embeds.grad[0, :4].abs().max() == 0 and embeds.grad[0, 4:].abs().max() > 0


@pytest.mark.parametrize("cfg", [MHA, GQA], ids=["mha", "gqa"])
def test_prefill_plus_decode_equals_full_forward(cfg):
    model = random_model(cfg)
    tokens = torch.randint(0, VOCAB, (2, 12))
    cache = KVCache.for_model(model, batch_size=2, max_len=16)
    with torch.no_grad():
        full = model(tokens)
        steps = [model(tokens[:, :8], cache=cache)]
        steps += [model(tokens[:, i:i + 1], cache=cache) for i in range(8, 12)]
    assert cache.length == 12
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


def test_cache_with_left_padding_matches_unpadded_rows():
    model = random_model(GQA)
    short, long = torch.randint(0, VOCAB, (1, 4)), torch.randint(0, VOCAB, (1, 7))
    tokens = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    sample_ids = torch.tensor([[-1] * 3 + [0] * 4, [0] * 7])
    positions = torch.tensor([[0, 0, 0, 0, 1, 2, 3], list(range(7))])
    nxt = torch.randint(0, VOCAB, (2, 1))
    cache = KVCache.for_model(model, batch_size=2, max_len=8)
    with torch.no_grad():
        prefill = model(tokens, positions=positions, sample_ids=sample_ids, cache=cache)
        step = model(nxt, positions=torch.tensor([[4], [7]]), cache=cache)
        ref_short = model(torch.cat([short, nxt[:1]], 1))
        ref_long = model(torch.cat([long, nxt[1:]], 1))
    assert torch.isfinite(prefill).all()
    assert (prefill[0, 3:] - ref_short[0, :4]).abs().max() <= 1e-5
    assert (step[0, 0] - ref_short[0, 4]).abs().max() <= 1e-5
    assert (step[1, 0] - ref_long[0, 7]).abs().max() <= 1e-5


def test_cache_overflow_and_bad_inputs_raise():
    model = random_model(MHA)
    cache = KVCache.for_model(model, batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="KV cache holds 4 positions"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exactly one of tokens or embeds"):
        model()
    with pytest.raises(ValueError, match="max_seq_len=128"):
        model(torch.zeros(1, 129, dtype=torch.long))


def test_meta_device_build_matches_normal_build():
    reference = random_model(LLAMA3)
    with torch.device("meta"):
        lazy = Transformer(LLAMA3)
    lazy.to_empty(device="cpu")
    lazy.init_buffers("cpu")
    lazy.load_state_dict(reference.state_dict())
    tokens = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        assert torch.equal(lazy(tokens), reference(tokens))


def test_rope_tables_stay_fp32_when_weights_are_cast():
    model = random_model(MHA)
    cos = model.rope_cos.clone()
    model.to(torch.bfloat16)
    assert model.tok_embeddings.weight.dtype == torch.bfloat16
    assert model.rope_cos.dtype == torch.float32 and torch.equal(model.rope_cos, cos)
    assert model(torch.randint(0, VOCAB, (1, 5))).dtype == torch.bfloat16


def test_init_weights_and_tied_embeddings():
    model = Transformer(QWEN)
    model.init_weights()
    assert model.output.weight is model.tok_embeddings.weight
    assert torch.equal(model.layers[0].ffn_norm.weight, torch.ones(QWEN.dim))
    assert torch.equal(model.layers[0].attention.wq.bias, torch.zeros(QWEN.dim))
    assert abs(model.layers[0].attention.wq.weight.std().item() - 0.02) < 0.004
    assert model.layers[0].attention.wo.weight.std() < 0.015
