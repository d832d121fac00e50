"""The LLaVA export answers as the trained model does for every ``vision.resize`` mode, on wide and tall
photo-like images; it reads back through the Hugging Face LLaVA import with the same logits; bf16 exports
load and generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from data_factory import photo
from export_factory import same_answer, tiny_model_dir
from mmtune.errors import CheckpointError
from mmtune.formats.export_hf import export
from mmtune.formats.hf_images import PROCESSORS, processor_fields
from mmtune.inference.engine import Engine

IMAGES = (photo(53, 37), photo(37, 53))  # wide, tall


@pytest.mark.parametrize("mode", ["center_crop", "resize", "pad"])
def test_llava_export_answers_as_mmtune_and_reads_back(tmp_path, llama_tokenizer_dir, mode):
    src = tiny_model_dir(tmp_path / "model", Path(llama_tokenizer_dir), "debug-clip", resize=mode)
    out = export(src, tmp_path / "hf", fmt="hf")
    assert json.loads((out / "preprocessor_config.json").read_text())["image_processor_type"] == PROCESSORS[mode][0]
    engine = Engine.from_dir(src, template="llava_v1")
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    back = Engine.from_dir(out, template="llava_v1")  # the Hugging Face LLaVA import of the export
    assert back.model.vision_cfg.resize == mode
    for image in IMAGES:
        answer = same_answer(engine, hf, processor, image)
        assert same_answer(back, hf, processor, image) == answer
    card = (out / "README.md").read_text()
    assert f"- image mode: vision.resize {mode} (transformers {PROCESSORS[mode][0]})" in card
    assert "- chat template: mmtune's llava_v1" in card and "- dtype: float32" in card
    assert f"mmtune generate --model {src} --template llava_v1 --image IMAGE --prompt TEXT" in card


def test_bf16_llava_export_loads_and_generates(tmp_path, llama_tokenizer_dir):
    src = tiny_model_dir(tmp_path / "model", Path(llama_tokenizer_dir), "debug-siglip")
    out = export(src, tmp_path / "hf", fmt="hf", dtype=torch.bfloat16)
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    assert hf.dtype == torch.bfloat16
    back = Engine.from_dir(out, template="llava_v1", dtype=torch.bfloat16)
    assert len(same_answer(back, hf, AutoProcessor.from_pretrained(out), IMAGES[0], torch.bfloat16)) > 0


def test_a_mode_without_a_processor_is_refused_in_one_line():
    with pytest.raises(CheckpointError, match="vision.resize 'letterbox' has no transformers image processor"):
        processor_fields("letterbox", 32)


def test_the_import_reads_the_image_processor_nested_in_processor_config(tmp_path, llama_tokenizer_dir):
    from mmtune.formats.hf_images import image_settings

    src = tiny_model_dir(tmp_path / "model", Path(llama_tokenizer_dir), "debug-clip", resize="resize")
    out = export(src, tmp_path / "hf", fmt="hf")
    (out / "preprocessor_config.json").unlink()  # transformers 5's save_pretrained writes only the nested form
    assert image_settings(out, 32)["resize"] == "resize"
