"""Real-size presets build on the meta device with the published parameter counts."""

from __future__ import annotations

import pytest

from mmtune.config import Config, build
from mmtune.models.vlm import build_model

LLM_PARAMS = {  # the released checkpoints' sizes
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama2-70b": 68_976_648_192,
    "llama3-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
}
TOWER_PARAMS = {
    "clip-vit-l-336": 303_507_456,  # CLIPVisionModel of openai/clip-vit-large-patch14-336
    "siglip-so400m": 428_225_600 - 15_238_352,  # SigLIP so400m/14-384 vision model minus its unused pooling head
    "blip2-vitg-qformer": 1_091_114_496,  # blip2-opt-2.7b (3,744,679,936) minus OPT-2.7B and language_projection
}
TOWER_TOKENS = {"clip-vit-l-336": 576, "siglip-so400m": 729, "blip2-vitg-qformer": 34}


def meta_model(llm: str, tower: str | None = None):
    values: dict = {"model": {"preset": llm}}
    if tower:
        values["vision"] = {"preset": tower}
        values["connector"] = {"kind": "qformer" if tower.startswith("blip2") else "mlp"}
    return build_model(build(Config, values), image_token_id=32000, device="meta")


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("llm", sorted(LLM_PARAMS))
def test_decoder_presets_have_the_released_sizes(llm: str) -> None:
    model = meta_model(llm)
    assert count(model.llm) == LLM_PARAMS[llm]
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("tower", sorted(TOWER_PARAMS))
def test_tower_presets_have_the_released_sizes(tower: str) -> None:
    model = meta_model("llama2-13b", tower)
    assert count(model.vision) == TOWER_PARAMS[tower]
    assert model.num_image_tokens == TOWER_TOKENS[tower]
    assert all(p.device.type == "meta" for p in model.parameters())


def test_llava_1_5_7b_and_accessory_13b_totals() -> None:
    assert count(meta_model("llama2-7b", "clip-vit-l-336")) == 7_062_902_784  # liuhaotian/llava-v1.5-7b (vocabulary 32000)
    accessory = meta_model("llama2-13b", "blip2-vitg-qformer")
    assert count(accessory.connector) == 768 * 5120 + 5120 + 2 * 5120 + 2 * 5120  # Linear, LayerNorm, start/end
