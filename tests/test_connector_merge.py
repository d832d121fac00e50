"""``connector.merge``: neighbouring patch features merged into one image token before the MLP."""

from __future__ import annotations

import pytest
import torch

from mmtune.config import Config, build
from mmtune.errors import CheckpointError, ConfigError
from mmtune.models.adapters.hf_llava import to_llava_config
from mmtune.models.connectors import merge_patches
from mmtune.models.io import load_model, save_model
from mmtune.models.vlm import build_model

VOCAB = 96
LLM = {"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": VOCAB, "max_seq_len": 64}


def make(merge: int, tower: str = "debug-clip", kind: str = "mlp"):
    cfg = build(Config, {"model": LLM, "vision": {"preset": tower}, "connector": {"kind": kind, "merge": merge}})
    return build_model(cfg, image_token_id=VOCAB + 1)


def test_blocks_are_concatenated_row_major_in_row_major_order() -> None:
    side, merge, width = 4, 2, 3
    features = torch.randn(2, side * side, width)
    grid = features.reshape(2, side, side, width)
    expected = torch.stack([
        torch.cat([grid[:, r + i, c + j] for i in range(merge) for j in range(merge)], dim=-1)
        for r in range(0, side, merge) for c in range(0, side, merge)], dim=1)
    assert torch.equal(merge_patches(features, merge), expected)


def test_merged_model_has_fewer_tokens_and_runs() -> None:
    plain, merged = make(1), make(2)
    assert (plain.num_image_tokens, merged.num_image_tokens) == (16, 4)
    assert merged.connector.linear_1.in_features == 4 * plain.connector.linear_1.in_features
    pixels = torch.randn(2, 3, 32, 32)
    assert merged.encode_images(pixels).shape == (2, 4, LLM["dim"])
    ids = torch.tensor([[1] + [VOCAB + 1] * 4 + [5, 6]] * 2)
    assert merged(ids, pixel_values=pixels).shape == (2, 7, VOCAB)


def test_connector_output_is_the_mlp_of_the_merged_features() -> None:
    model = make(2)
    features = torch.randn(1, 16, model.vision.hidden_size)
    mlp = model.connector
    want = mlp.linear_2(mlp.act(mlp.linear_1(merge_patches(features, 2))))
    assert torch.allclose(mlp(features), want)


def test_saved_model_keeps_the_merge(tmp_path) -> None:
    model = make(2).eval()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.num_image_tokens == 4
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_images(pixels), model.encode_images(pixels))


@pytest.mark.parametrize("merge,tower,match", [
    (3, "debug-clip", "divisor of the side of the 4x4 patch grid"),
    (2, "debug-blip2", "not a square grid of patches"),
])
def test_merge_that_does_not_fit_the_tower_is_a_config_error(merge: int, tower: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        make(merge, tower)
    assert "connector.merge" in str(info.value)


def test_llava_export_refuses_a_merge() -> None:
    model = make(2)
    with pytest.raises(CheckpointError, match="merge=2 cannot be exported"):
        to_llava_config(model.model_cfg, model.vision_cfg, model.connector_cfg, model.vision.hf_config(), 5)
