"""VisionLanguageModel: Llava parity, the placeholder scatter, the count check, trainable parts."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from mmtune.config import Config, build
from mmtune.errors import CheckpointError, ConfigError
from mmtune.models.adapters.hf_llava import from_llava_state_dict, to_llava_config, to_llava_state_dict
from mmtune.models.vlm import VisionLanguageModel, build_model

VOCAB = 128
LLM = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": VOCAB, "max_seq_len": 128}


def make(tower: str = "debug-clip", kind: str = "mlp", image_token_id: int = VOCAB + 3,
         **trainable: str) -> VisionLanguageModel:
    cfg = build(Config, {"model": LLM, "vision": {"preset": tower}, "connector": {"kind": kind},
                         "trainable": trainable})
    return build_model(cfg, image_token_id=image_token_id)


def randomize_norms(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("llm.") and "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))


def llava_twin(model: VisionLanguageModel, image_token_id: int) -> LlavaForConditionalGeneration:
    values = to_llava_config(model.model_cfg, model.vision_cfg, model.connector_cfg, model.vision.hf_config(),
                             image_token_id)
    values = {k: v for k, v in values.items() if k not in ("model_type", "architectures")}
    hf = LlavaForConditionalGeneration(LlavaConfig(**values)).eval()
    missing, unexpected = hf.load_state_dict(to_llava_state_dict(model.state_dict(), model.model_cfg), strict=False)
    assert not missing and not unexpected
    return hf


@pytest.mark.parametrize("vision", ["debug-clip", "debug-siglip"])
def test_mlp_model_matches_transformers_llava(vision: str) -> None:
    image_id = 120  # inside the vocabulary: transformers looks it up before overwriting it
    model = make(vision, image_token_id=image_id).eval()
    randomize_norms(model)
    hf = llava_twin(model, image_id)
    n = model.num_image_tokens
    assert n == 16  # (32 / 8) ** 2 patches, CLS dropped for CLIP
    ids = torch.randint(0, 100, (2, 24))
    ids[0, 1:1 + n] = image_id
    ids[1, 5:5 + n] = image_id
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model(ids, pixels)
        theirs = hf(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_llava_state_dict_round_trip_and_padding() -> None:
    model = make()
    sd = model.state_dict()
    padded = to_llava_state_dict(sd, model.model_cfg, vocab_size=VOCAB + 64)
    assert padded["lm_head.weight"].shape[0] == VOCAB + 64
    torch.testing.assert_close(padded["model.language_model.embed_tokens.weight"][-1],
                               sd["llm.tok_embeddings.weight"].mean(0))
    back = from_llava_state_dict(padded, model.model_cfg)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    hf4 = {k.replace("model.language_model.", "language_model.model.").replace("model.vision_tower.",
           "vision_tower.vision_model.").replace("lm_head.", "language_model.lm_head."): v for k, v in padded.items()}
    back4 = from_llava_state_dict(hf4, model.model_cfg)
    assert set(back4) == set(sd) and all(torch.equal(v, sd[k]) for k, v in back4.items())


def test_llava_config_refuses_what_it_cannot_hold() -> None:
    model = make("debug-blip2", "qformer")
    with pytest.raises(CheckpointError, match="clip or siglip"):
        to_llava_config(model.model_cfg, model.vision_cfg, model.connector_cfg, {}, 5)
    clip = make()
    with pytest.raises(CheckpointError, match=f"must be below vocab_size {VOCAB}"):
        to_llava_config(clip.model_cfg, clip.vision_cfg, clip.connector_cfg, clip.vision.hf_config(), VOCAB + 3)


def test_placeholders_are_scattered_in_order_and_never_looked_up() -> None:
    image_id = VOCAB + 3  # outside the embedding: a lookup would raise
    model = make(image_token_id=image_id).eval()
    n = model.num_image_tokens
    ids = torch.randint(0, VOCAB, (2, 40))
    ids[0, 2:2 + n] = image_id
    ids[0, 20:20 + n] = image_id
    ids[1, 3:3 + n] = image_id
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        embeds = model.embed_inputs(ids, pixels)
        images = model.encode_images(pixels)
        text = model.llm.tok_embeddings(ids.clamp(max=VOCAB - 1))
    torch.testing.assert_close(embeds[0, 2:2 + n], images[0])
    torch.testing.assert_close(embeds[0, 20:20 + n], images[1])
    torch.testing.assert_close(embeds[1, 3:3 + n], images[2])
    is_text = ids != image_id
    torch.testing.assert_close(embeds[is_text], text[is_text])


def test_count_mismatch_names_both_numbers() -> None:
    model = make()
    ids = torch.randint(0, VOCAB, (1, 30))
    ids[0, 1:11] = model.image_token_id
    with pytest.raises(ValueError, match=r"10 image placeholder positions .* 1 images x 16 tokens = 16"):
        model.embed_inputs(ids, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"10 image placeholder positions .* 0 images x 16 tokens = 0"):
        model.embed_inputs(ids, None)


def test_text_only_batch_never_calls_the_tower(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make()

    def explode(*args, **kwargs):
        raise AssertionError("the tower ran on a text-only batch")

    monkeypatch.setattr(model.vision, "forward", explode)
    ids = torch.randint(0, VOCAB, (2, 12))
    logits = model(ids)
    torch.testing.assert_close(logits, model.llm(ids))


def test_text_only_model_refuses_images() -> None:
    cfg = build(Config, {"model": LLM})
    model = build_model(cfg, image_token_id=VOCAB)
    assert model.vision is None and model.connector is None and model.num_image_tokens == 0
    with pytest.raises(ValueError, match="no vision tower"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.randn(1, 3, 32, 32))


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("vision", ["frozen", "full"])
@pytest.mark.parametrize("connector", ["frozen", "full"])
@pytest.mark.parametrize("llm", ["frozen", "full"])
def test_trainable_parts_and_eval_mode(vision: str, connector: str, llm: str) -> None:
    model = make("debug-blip2", "qformer", vision=vision, connector=connector, llm=llm)
    parts = {"vision": vision, "connector": connector, "llm": llm}
    assert trainable_names(model) == {name for name, part in parts.items() if part == "full"}
    for name, part in parts.items():
        module = getattr(model, name)
        assert all(p.requires_grad == (part == "full") for p in module.parameters())
    model.train()
    for name, part in parts.items():
        assert all(m.training == (part == "full") for m in getattr(model, name).modules()), name
    model.eval()
    assert not any(m.training for m in model.modules())


def test_frozen_qformer_is_deterministic_under_train_and_gets_no_grad() -> None:
    model = make("debug-blip2", "qformer", vision="frozen")
    assert model.vision.qformer.config.hidden_dropout_prob > 0  # dropout would fire in train mode
    model.train()
    ids = torch.randint(0, VOCAB, (1, 12))
    ids[0, 1:1 + model.num_image_tokens] = model.image_token_id
    pixels = torch.randn(1, 3, 32, 32)
    first, second = model(ids, pixels), model(ids, pixels)
    torch.testing.assert_close(first, second)
    first.sum().backward()
    assert all(p.grad is None for p in model.vision.parameters())
    assert model.connector.start_img.grad is not None and model.connector.proj[0].weight.grad is not None


def test_full_vision_tower_trains() -> None:
    model = make(vision="full")
    ids = torch.randint(0, VOCAB, (1, 20))
    ids[0, 1:17] = model.image_token_id
    model(ids, torch.randn(1, 3, 32, 32)).sum().backward()
    assert model.vision.vision_model.embeddings.patch_embedding.weight.grad is not None


def test_connector_without_matching_tower_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="qformer needs blip2"):
        make("debug-clip", "qformer")


def test_num_image_tokens_per_combination() -> None:
    assert make("debug-blip2", "qformer").num_image_tokens == 4 + 2
    assert make("debug-blip2", "mlp").num_image_tokens == 4
    assert make("debug-siglip").num_image_tokens == 16


def test_init_weights_is_seeded_and_resets_connector() -> None:
    torch.manual_seed(3)
    a = make()
    torch.manual_seed(3)
    b = make()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    std = a.llm.layers[0].attention.wq.weight.std().item()
    assert 0.015 < std < 0.025  # init_weights' normal(0, 0.02), not PyTorch's default
