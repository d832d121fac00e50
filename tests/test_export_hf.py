"""``mmtune export --format hf``: transformers loads the LLaVA / Llama directories and answers like mmtune."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlamaForCausalLM, LlavaForConditionalGeneration

from export_factory import tiny_model_dir
from mmtune.cli import main
from mmtune.config import VisionConfig, build
from mmtune.data.images import ImageTransform
from mmtune.data.records import chat_record
from mmtune.data.templates import get_template
from mmtune.errors import CheckpointError
from mmtune.formats.export_hf import export
from mmtune.models.generate import SamplingParams, generate
from mmtune.models.tokenizer import Tokenizer
from mmtune.models.vision import resolve_image_settings


@pytest.fixture(scope="module")
def exported(tmp_path_factory, llama_tokenizer_dir) -> dict[str, tuple[Path, Path]]:
    """(saved model, LLaVA export) per tower, built once for the module."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for vision in ("debug-clip", "debug-siglip"):
        src = tiny_model_dir(root / vision / "model", Path(llama_tokenizer_dir), vision)
        out[vision] = (src, export(src, root / vision / "hf", fmt="hf"))
    return out


@pytest.mark.parametrize("vision", ["debug-clip", "debug-siglip"])
def test_llava_export_gives_the_same_greedy_answer(exported, vision):
    src, out = exported[vision]
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    from mmtune.models.io import load_model

    ours = load_model(src)
    tok = Tokenizer.from_path(out)
    n = ours.num_image_tokens
    prompt = [tok.bos_id] + tok.encode("USER: ") + [tok.image_token_id] * n
    prompt += tok.encode("\nWhat is it? ASSISTANT:", continuation=True)
    pixels = torch.randn(1, 3, 32, 32)
    expected = generate(ours, [prompt], pixels, SamplingParams(max_new_tokens=12))[0]
    with torch.no_grad():
        got = hf.generate(input_ids=torch.tensor([prompt]), pixel_values=pixels, max_new_tokens=12, do_sample=False,
                          eos_token_id=None, pad_token_id=tok.pad_id)[0, len(prompt):].tolist()
    assert got == expected and len(expected) == 12
    assert (out / "README.md").read_text().startswith("# hf (mmtune)")


def test_llava_processor_matches_mmtune_inputs(exported):
    src, out = exported["debug-clip"]
    processor = AutoProcessor.from_pretrained(out)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    inputs = processor(text="USER: <image>\nWhat is it? ASSISTANT:", images=image, return_tensors="pt")
    tok = Tokenizer.from_path(src)
    assert int((inputs["input_ids"] == tok.image_token_id).sum()) == 16  # (32 / 8)^2 patches, CLS dropped
    settings = resolve_image_settings(build(VisionConfig, {"preset": "debug-clip"}, "vision"))
    ours = ImageTransform.from_settings(settings)(image)
    torch.testing.assert_close(inputs["pixel_values"][0], ours, atol=2e-2, rtol=0)
    record = chat_record([("<image>\nWhat is it?", "A cat.")], image="x.png")
    segments = get_template("llava_v1").render(record)
    text = "".join({"bos": "<s>", "eos": "</s>", "image": "<image>"}.get(s.kind, s.text) for s in segments)
    rendered = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A cat."}], tokenize=False)
    assert rendered == text


def test_llm_only_export_loads_as_llama(tmp_path, llama_tokenizer_dir):
    mlp = tiny_model_dir(tmp_path / "mlp", Path(llama_tokenizer_dir), "debug-blip2", connector="mlp")
    with pytest.raises(CheckpointError, match="the Llava layout holds a clip or siglip tower"):
        export(mlp, tmp_path / "llava", fmt="hf")
    src = tiny_model_dir(tmp_path / "model", Path(llama_tokenizer_dir), "debug-blip2")
    assert main(["export", str(src), "--out", str(tmp_path / "llm"), "--format", "hf", "--llm-only"]) == 0
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "llm").eval()
    from mmtune.models.io import load_model

    ours = load_model(src)
    tokens = torch.randint(0, 32000, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, ours(tokens), atol=1e-4, rtol=1e-4)
    assert "LlamaForCausalLM.from_pretrained" in (tmp_path / "llm" / "README.md").read_text()
    assert main(["export", str(src), "--out", str(tmp_path / "x"), "--llm-only"]) == 2


def test_mmtune_export_card_has_recipe_and_metrics(tmp_path, llama_tokenizer_dir):
    src = tiny_model_dir(tmp_path / "run" / "final", Path(llama_tokenizer_dir))
    (tmp_path / "run" / "final" / "report.json").write_text(json.dumps({"coco": {"cider": 0.75}, "vqav2": 61.5}))
    (src / "config.yaml").write_text("training:\n  lr: 2.0e-05\n  init_from: runs/stage1/final\n"
                                     "data:\n  sources:\n  - path: llava_instruct_150k.json\n    kind: llava\n")
    out = export(src, tmp_path / "release")
    card = (out / "README.md").read_text()
    assert "| coco.cider | 0.75 |" in card and "| vqav2 | 61.5 |" in card
    assert "initialised from: runs/stage1/final" in card and "`llava_instruct_150k.json` (llava" in card
    assert (out / "model.safetensors").is_file()
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        export(src, tmp_path / "release")
