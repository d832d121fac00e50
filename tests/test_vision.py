"""Vision towers: loading transformers checkpoints (BLIP-2 without its OPT, CLIP full / vision-only /
sharded), Q-Former feature parity, the qformer connector layout, image settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Model,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    OPTConfig,
)

from mmtune import presets
from mmtune.config import Config, VisionConfig, build
from mmtune.errors import CheckpointError, ConfigError
from mmtune.models.vision import Blip2Tower, ImageSettings, build_tower, resolve_image_settings
from mmtune.models.vlm import build_model

BLIP2 = presets.VISION_PRESETS["debug-blip2"]["hf_config"]
CLIP = presets.VISION_PRESETS["debug-clip"]["hf_config"]


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny full Blip2ForConditionalGeneration (OPT language model included), saved with save_pretrained."""
    torch.manual_seed(1)
    text = OPTConfig(hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2, vocab_size=50,
                     word_embed_proj_dim=32)
    config = Blip2Config(vision_config=BLIP2["vision_config"], qformer_config=BLIP2["qformer_config"],
                         num_query_tokens=BLIP2["num_query_tokens"], text_config=text.to_dict())
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():  # transformers initialises the queries to zero and the ViT with std 1e-10
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    directory = tmp_path_factory.mktemp("blip2")
    model.save_pretrained(directory)
    return directory


def blip2_cfg(path: Path | None, **extra: object) -> Config:
    vision = {"kind": "blip2", "path": str(path)} if path else {"preset": "debug-blip2"}
    return build(Config, {"model": {"dim": 64, "n_layers": 1, "n_heads": 4, "vocab_size": 96},
                          "vision": vision, "connector": {"kind": "qformer"}, **extra})


def test_blip2_tower_loads_only_its_keys_and_matches_get_qformer_features(blip2_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    def no_lm(*args, **kwargs):
        raise AssertionError("the OPT language model must not be built")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", no_lm)
    monkeypatch.setattr(transformers.OPTForCausalLM, "__init__", no_lm)
    model = build_model(blip2_cfg(blip2_dir), image_token_id=100).eval()
    monkeypatch.undo()
    reference = Blip2Model.from_pretrained(blip2_dir).eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours = model.vision(pixels)
        theirs = reference.get_qformer_features(pixel_values=pixels)
    assert ours.shape == (3, 4, 32)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.vision.query_tokens, reference.query_tokens)


def test_qformer_connector_layout_and_image_right_after_bos(blip2_dir: Path) -> None:
    model = build_model(blip2_cfg(blip2_dir), image_token_id=100).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        images = model.encode_images(pixels)
        queries = model.connector.proj(model.vision(pixels))
    assert images.shape == (2, 4 + 2, 64) and model.num_image_tokens == 6
    torch.testing.assert_close(images[:, 0], model.connector.start_img[0].expand(2, -1))
    torch.testing.assert_close(images[:, -1], model.connector.end_img[0].expand(2, -1))
    torch.testing.assert_close(images[:, 1:-1], queries)
    bos = 1
    ids = torch.tensor([[bos] + [100] * 6 + [5, 6, 7]] * 2)
    with torch.no_grad():
        embeds = model.embed_inputs(ids, pixels)
    torch.testing.assert_close(embeds[:, 0], model.llm.tok_embeddings.weight[bos].expand(2, -1))
    torch.testing.assert_close(embeds[:, 1:7], images)
    torch.testing.assert_close(embeds[:, 7:], model.llm.tok_embeddings(ids[:, 7:]))


def test_blip2_settings_and_hf_config_from_the_checkpoint(blip2_dir: Path) -> None:
    cfg = blip2_cfg(blip2_dir).vision
    settings = resolve_image_settings(cfg)
    assert settings.size == 32 and settings.mean == tuple(presets.CLIP_MEAN)
    tower = build_tower(cfg)
    assert isinstance(tower, Blip2Tower) and tower.num_tokens == 4
    rebuilt = Blip2Tower(tower.hf_config())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in tower.state_dict().items()}


def save_clip(directory: Path, full: bool, **kwargs: object) -> CLIPVisionModel | CLIPModel:
    torch.manual_seed(2)
    if full:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
                    bos_token_id=0, eos_token_id=1, pad_token_id=1)
        model = CLIPModel(CLIPConfig(vision_config=CLIP, text_config=text, projection_dim=32))
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**CLIP))
    model.save_pretrained(directory, **kwargs)
    return model


@pytest.mark.parametrize("layout", ["full", "vision-only", "sharded"])
def test_clip_tower_loads_from_checkpoint_dirs(tmp_path: Path, layout: str) -> None:
    kwargs = {"max_shard_size": "20KB"} if layout == "sharded" else {}
    reference = save_clip(tmp_path, full=layout == "full", **kwargs)
    if layout == "sharded":
        assert (tmp_path / "model.safetensors.index.json").is_file()
    cfg = VisionConfig(kind="clip", path=str(tmp_path), feature_layer=-2)
    tower = build_tower(cfg)
    tower.load_pretrained(tmp_path)
    vision = (reference.vision_model if layout == "full" else reference).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        torch.testing.assert_close(tower.eval()(pixels), expected)


def test_tower_dir_of_the_wrong_kind_or_shape_is_refused(tmp_path: Path, blip2_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="model_type 'blip-2' is not a clip checkpoint"):
        build_tower(VisionConfig(kind="clip", path=str(blip2_dir)))
    with pytest.raises(CheckpointError, match="no config.json"):
        build_tower(VisionConfig(kind="clip", path=str(tmp_path)))
    save_clip(tmp_path, full=False)
    tower = build_tower(VisionConfig(kind="clip", hf_config={**CLIP, "hidden_size": 64, "intermediate_size": 64}))
    with pytest.raises(CheckpointError, match="shape mismatches: .*saved \\[32\\] vs model \\[64\\]"):
        tower.load_pretrained(tmp_path)


def test_feature_layer_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="vision.feature_layer"):
        build_tower(VisionConfig(kind="clip", hf_config=CLIP, feature_layer=-4))


def test_image_settings_precedence(tmp_path: Path) -> None:
    save_clip(tmp_path, full=False)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 48, "width": 48}, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}))
    from_dir = resolve_image_settings(VisionConfig(kind="clip", path=str(tmp_path)))
    assert from_dir == ImageSettings(size=32, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), resize="center_crop",
                                     max_pixels=64_000_000)
    own = resolve_image_settings(VisionConfig(kind="clip", path=str(tmp_path), image_size=64, image_mean=[0, 0, 0],
                                              resize="pad"))
    assert (own.size, own.mean, own.std, own.resize) == (64, (0.0, 0.0, 0.0), (0.4, 0.5, 0.6), "pad")
    siglip = resolve_image_settings(VisionConfig(kind="siglip"))
    assert (siglip.size, siglip.mean, siglip.std) == (224, (0.5,) * 3, (0.5,) * 3)
    preset = resolve_image_settings(build(VisionConfig, {"preset": "clip-vit-l-336"}))
    assert (preset.size, preset.mean, preset.resize) == (336, tuple(presets.CLIP_MEAN), "pad")
    with pytest.raises(ConfigError, match="vision.kind"):
        resolve_image_settings(VisionConfig())


def test_image_size_override_changes_the_tower_resolution() -> None:
    tower = build_tower(VisionConfig(kind="clip", hf_config=CLIP, image_size=48))
    assert tower.num_tokens == (48 // 8) ** 2
    assert tower(torch.randn(1, 3, 48, 48)).shape == (1, 36, 32)
