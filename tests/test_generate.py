"""Generation: cache vs no cache, left-padded batches, images in the prefix, sampling, stops, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from mmtune.config import ConnectorConfig, ModelConfig, VisionConfig, build
from mmtune.errors import ConfigError
from mmtune.models.generate import SamplingParams, VocabHead, generate, sample_next
from mmtune.models.llama import KVCache
from mmtune.models.vlm import VisionLanguageModel

VOCAB = 97
IMAGE_ID = VOCAB  # like <image>: one past the decoder's vocabulary
CFG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, max_seq_len=64)


def tiny_vlm(vision: VisionConfig) -> VisionLanguageModel:
    """The real VisionLanguageModel with a decoder whose logits have clear winners (std 0.3 weights)."""
    torch.manual_seed(0)
    model = VisionLanguageModel(CFG, vision, ConnectorConfig(kind="mlp"), IMAGE_ID)
    model.init_weights()
    model.llm.init_weights(std=0.3)
    return model.eval()


@pytest.fixture(scope="module")
def vlm() -> VisionLanguageModel:
    return tiny_vlm(VisionConfig(kind="none"))


@pytest.fixture(scope="module")
def clip_vlm() -> VisionLanguageModel:
    return tiny_vlm(build(VisionConfig, {"preset": "debug-clip"}))


PROMPTS = [[1, 5, 9, 14, 3, 7, 22], [1, 40], [1, 8, 8, 2, 61]]


def test_greedy_with_cache_equals_without_single_and_batch(vlm):
    params = SamplingParams(max_new_tokens=12)
    single = generate(vlm, PROMPTS[:1], params=params)
    assert single == generate(vlm, PROMPTS[:1], params=params, use_cache=False)
    batch = generate(vlm, PROMPTS, params=params)
    assert batch == generate(vlm, PROMPTS, params=params, use_cache=False)
    assert [len(r) for r in batch] == [12, 12, 12]
    # left padding changes nothing: each row equals the prompt generated on its own
    assert batch == [generate(vlm, [p], params=params)[0] for p in PROMPTS]
    assert batch[0] == single[0]


def test_image_prefix_lives_in_the_cache(clip_vlm):
    n = clip_vlm.num_image_tokens
    prompts = [[1] + [IMAGE_ID] * n + [30, 31], [1] + [IMAGE_ID] * n + [12]]
    pixels = torch.randn(2, 3, 32, 32)
    params = SamplingParams(max_new_tokens=8)
    cached = generate(clip_vlm, prompts, pixel_values=pixels, params=params)
    assert cached == generate(clip_vlm, prompts, pixel_values=pixels, params=params, use_cache=False)
    assert cached[1] == generate(clip_vlm, prompts[1:], pixel_values=pixels[1:], params=params)[0]
    other = generate(clip_vlm, prompts, pixel_values=torch.randn(2, 3, 32, 32), params=params)
    assert other != cached  # the image matters


def test_seeded_sampling_is_reproducible_and_seeds_differ(vlm):
    def sample(seed):
        return generate(vlm, PROMPTS, params=SamplingParams(max_new_tokens=16, temperature=1.5, seed=seed))

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    hot = SamplingParams(max_new_tokens=16, temperature=1.5, seed=3)
    assert sample(3) == generate(vlm, PROMPTS, params=hot, use_cache=False)


def test_tiny_top_p_is_greedy(vlm):
    greedy = generate(vlm, PROMPTS, params=SamplingParams(max_new_tokens=10))
    nucleus = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=0)
    assert generate(vlm, PROMPTS, params=nucleus) == greedy


def test_top_p_draws_only_from_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    generator = torch.Generator().manual_seed(0)
    drawn = sample_next(logits, temperature=1.0, top_p=0.7, generator=generator)
    assert set(drawn.tolist()) == {0, 1}
    assert abs((drawn == 0).float().mean().item() - 0.5 / 0.8) < 0.05
    assert sample_next(logits[:1], temperature=0.0, top_p=1.0).tolist() == [0]


def test_stop_ids_end_each_row_and_are_not_returned(vlm):
    free = generate(vlm, PROMPTS, params=SamplingParams(max_new_tokens=12))
    stop = free[1][4]
    stopped = generate(vlm, PROMPTS, params=SamplingParams(max_new_tokens=12, stop_ids=[stop]))
    for row, tokens in zip(free, stopped):
        expected = row[:row.index(stop)] if stop in row else row
        assert tokens == expected
    assert len(stopped[1]) <= 4
    with_stop = SamplingParams(max_new_tokens=12, stop_ids=[stop], include_stop=True)
    streamed: list[list[int]] = [[] for _ in PROMPTS]
    kept = generate(vlm, PROMPTS, params=with_stop, on_token=lambda row, token: streamed[row].append(token))
    assert kept[1] == stopped[1] + [stop] and kept == streamed
    assert kept[0] == stopped[0] + ([stop] if stop in free[0] else [])


def test_on_token_streams_every_returned_token_in_order(vlm):
    seen: list[list[int]] = [[] for _ in PROMPTS]
    out = generate(vlm, PROMPTS, params=SamplingParams(max_new_tokens=6),
                   on_token=lambda row, token: seen[row].append(token))
    assert seen == out


def test_budget_is_capped_by_max_seq_len(vlm):
    out = generate(vlm, [[1] * 60, [1, 2]], params=SamplingParams(max_new_tokens=50))
    assert [len(r) for r in out] == [4, 4]
    assert generate(vlm, [[1, 2]], params=SamplingParams(max_new_tokens=0)) == [[]]


def test_bare_transformer_generates_text(vlm):
    params = SamplingParams(max_new_tokens=5)
    assert generate(vlm.llm, PROMPTS, params=params) == generate(vlm, PROMPTS, params=params)
    with pytest.raises(ConfigError, match="pixel_values"):
        generate(vlm.llm, PROMPTS, pixel_values=torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("params, field", [
    (SamplingParams(temperature=-0.1), "sampling.temperature"),
    (SamplingParams(temperature=float("nan")), "sampling.temperature"),
    (SamplingParams(top_p=0.0), "sampling.top_p"),
    (SamplingParams(top_p=1.5), "sampling.top_p"),
    (SamplingParams(max_new_tokens=-1), "sampling.max_new_tokens"),
    (SamplingParams(seed=-5), "sampling.seed"),
    (SamplingParams(stop_ids=[2, "x"]), "sampling.stop_ids"),
])
def test_bad_params_raise(vlm, params, field):
    with pytest.raises(ValueError, match=field):
        generate(vlm, PROMPTS, params=params)


@pytest.mark.parametrize("prompts", [[], [[1, 2], []], [[1] * 64]])
def test_bad_prompts_raise(vlm, prompts):
    with pytest.raises(ConfigError, match="prompts"):
        generate(vlm, prompts)


def test_bf16_model_generates_with_a_bf16_cache(vlm):
    llm = copy.deepcopy(vlm.llm).to(torch.bfloat16)
    assert KVCache.for_model(llm, 2, 8).k[0].dtype == torch.bfloat16
    params = SamplingParams(max_new_tokens=6)
    out = generate(llm, PROMPTS, params=params)
    assert [len(r) for r in out] == [6, 6, 6]
    assert [r[0] for r in out] == [r[0] for r in generate(llm, PROMPTS, params=params, use_cache=False)]


@pytest.mark.parametrize("rows", [1, 5, 16])  # each layout: W_t copy, stored weight, W_t copy
@pytest.mark.parametrize("tied", [False, True])
def test_vocab_head_gives_the_output_layers_logits(tied, rows):
    from mmtune.models.llama import Transformer

    llm = Transformer(ModelConfig(dim=64, n_layers=1, n_heads=4, vocab_size=300, max_seq_len=32,
                                  tie_embeddings=tied)).eval()
    hidden = torch.randn(rows, 64)
    head = VocabHead(llm)
    assert head.weight_t is not None and head.weight_t.is_contiguous()
    assert torch.allclose(head(hidden), llm.output(hidden), atol=1e-5)
    assert head(hidden).dtype == torch.float32
