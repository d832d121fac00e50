"""The processor: image tokens and positions from the config alone, built from a run config or a saved
model without building the model, and the one thing training, serving and evaluation render with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmtune.config import Config, ConnectorConfig, ModelConfig, VisionConfig, build, load_config
from mmtune.data.images import ImageTransform
from mmtune.data.processor import Processor
from mmtune.data.records import Message, Record
from mmtune.errors import CheckpointError, ConfigError
from mmtune.models.io import save_model
from mmtune.models.tokenizer import Tokenizer
from mmtune.models.vision import resolve_image_settings
from mmtune.models.vlm import VisionLanguageModel, build_model, image_tokens_per_image
from mmtune.presets import VISION_PRESETS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONNECTORS = [ConnectorConfig(kind="mlp"), ConnectorConfig(kind="qformer"), ConnectorConfig(kind="mlp", merge=2)]


def _pairs() -> list[tuple[str, ConnectorConfig]]:
    return [(name, c) for name in VISION_PRESETS for c in CONNECTORS]


@pytest.mark.parametrize("preset, connector", _pairs(), ids=lambda v: getattr(v, "kind", v))
def test_image_tokens_from_the_config_equal_the_built_model_at_real_size(preset, connector):
    vision = build(VisionConfig, {"preset": preset}, "vision")
    try:
        with torch.device("meta"):
            model = VisionLanguageModel(ModelConfig(), vision, connector, image_token_id=0)
    except ConfigError as exc:  # a connector the tower cannot take: the count refuses it the same way
        with pytest.raises(ConfigError) as counted:
            image_tokens_per_image(vision, connector)
        assert str(counted.value) == str(exc)
        return
    assert image_tokens_per_image(vision, connector) == model.num_image_tokens


def test_real_presets_have_the_published_token_counts():
    clip = build(VisionConfig, {"preset": "clip-vit-l-336"}, "vision")
    blip2 = build(VisionConfig, {"preset": "blip2-vitg-qformer"}, "vision")
    assert image_tokens_per_image(clip, ConnectorConfig(kind="mlp")) == 576
    assert image_tokens_per_image(clip, ConnectorConfig(kind="mlp", merge=2)) == 144
    assert image_tokens_per_image(blip2, ConnectorConfig(kind="qformer")) == 34
    assert image_tokens_per_image(VisionConfig(), ConnectorConfig()) == 0


def test_image_position_is_a_property_of_the_connector_kind():
    assert ConnectorConfig(kind="qformer").image_position == "after_bos"
    assert ConnectorConfig(kind="mlp").image_position == "placeholder"


@pytest.mark.parametrize("config", ["quickstart-stage1.yaml", "quickstart-qformer-stage1.yaml",
                                    "llava15-7b-stage1.yaml", "accessory-qformer-13b-stage1.yaml"])
def test_processor_from_a_run_config(config, llama_tokenizer_dir):
    cfg = load_config(CONFIGS / config, ["--tokenizer.path", str(llama_tokenizer_dir),
                                         "--model.vocab_size", "32000", "--vision.path", "null"])
    processor = Processor.from_config(cfg)
    with torch.device("meta"):
        model = VisionLanguageModel(cfg.model, cfg.vision, cfg.connector, processor.tokenizer.image_token_id)
    assert processor.num_image_tokens == model.num_image_tokens
    assert processor.image_position == cfg.connector.image_position
    assert processor.image_transform == ImageTransform.from_settings(resolve_image_settings(cfg.vision))


def test_processor_from_config_errors_name_the_field(llama_tokenizer_dir):
    with pytest.raises(ConfigError, match="tokenizer.path"):
        Processor.from_config(Config())
    small = Config(tokenizer=build(type(Config().tokenizer), {"path": str(llama_tokenizer_dir)}),
                   model=ModelConfig(vocab_size=1000))
    with pytest.raises(ConfigError, match="vocab_size"):
        Processor.from_config(small)


@pytest.fixture
def saved(tmp_path, llama_tokenizer_dir) -> tuple[Path, VisionLanguageModel]:
    tokenizer = Tokenizer.from_path(llama_tokenizer_dir)
    cfg = Config(model=ModelConfig(dim=64, n_layers=1, n_heads=4, vocab_size=32000, max_seq_len=128),
                 vision=build(VisionConfig, {"preset": "debug-blip2", "resize": "pad"}),
                 connector=ConnectorConfig(kind="qformer"))
    model = build_model(cfg, tokenizer.image_token_id)
    return save_model(model, tmp_path / "model", tokenizer=tokenizer), model


def test_processor_from_a_saved_model_reads_no_weight(saved):
    directory, model = saved
    (directory / "model.safetensors").unlink()
    processor = Processor.from_saved_model(directory)
    assert processor.num_image_tokens == model.num_image_tokens == model.vision.num_tokens + 2
    assert processor.image_position == "after_bos"
    transform = processor.image_transform
    assert transform is not None and transform.resize == "pad" and transform.size == model.vision.image_size
    assert processor.with_max_image_pixels(100).image_transform.max_pixels == 100


def test_processor_of_a_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        Processor.from_saved_model(tmp_path)


def test_qformer_images_go_right_after_bos_and_mlp_images_at_the_marker(saved, llama_tokenizer_dir):
    directory, _ = saved
    after_bos = Processor.from_saved_model(directory)
    record = Record(messages=(Message("user", "Name it.\n<image>"),), image=b"img")
    ids = after_bos.generation_prompt(record, "alpaca")
    tok = after_bos.tokenizer
    n = after_bos.num_image_tokens
    assert ids[0] == tok.bos_id and ids[1:n + 1] == [tok.image_token_id] * n and tok.image_token_id not in ids[n + 1:]
    marker = Processor(tok, 5, "placeholder", None).generation_prompt(record, "alpaca")
    start = marker.index(tok.image_token_id)
    assert start > 1 and marker[start:start + 5] == [tok.image_token_id] * 5
