"""``mmtune convert llava``: tiny ``LlavaForConditionalGeneration`` directories written by transformers itself
(transformers 5 layout, and the same tensors renamed to the transformers 4 layout of the ``llava-hf`` Hub
releases) import with transformers' logits, image preprocessing and image token."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from data_factory import photo
from mmtune.cli import main
from mmtune.data.processor import Processor
from mmtune.errors import CheckpointError
from mmtune.formats.convert_llava import chat_template_name, llava_source
from mmtune.formats.pipeline import write_saved_model
from mmtune.models.io import load_model, read_sections

IMAGE_ID, PAD_ID, ROWS = 32000, 32001, 32064  # as llava-hf/llava-1.5-7b-hf: <image>, <pad>, padded to 64
SIZE = 32
# llava-hf/llava-1.5-7b-hf's chat template (chat_template.json): images first, then text, no system prompt.
HUB_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', "
    "'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}{% endgeneration %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
# transformers 5 state-dict names -> the transformers 4 names of the llava-hf Hub releases
HF4 = {"model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head.",
       "model.vision_tower.": "vision_tower.vision_model.", "model.multi_modal_projector.": "multi_modal_projector."}


def _tower(kind: str):
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=SIZE,
                 patch_size=8)
    return CLIPVisionConfig(**sizes) if kind == "clip" else SiglipVisionConfig(**sizes)


def write_llava(root: Path, tokenizer_dir: Path, kind: str = "clip") -> LlavaForConditionalGeneration:
    """A tiny transformers LLaVA saved with ``save_pretrained`` (sharded, with index), its tokenizer
    (``<image>`` and ``<pad>`` added as llava-hf's), image processor and chat template."""
    text = LlamaConfig(vocab_size=ROWS, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256)
    config = LlavaConfig(vision_config=_tower(kind), text_config=text, image_token_index=IMAGE_ID,
                         vision_feature_layer=-2, image_seq_length=16,
                         vision_feature_select_strategy="default" if kind == "clip" else "full")
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(root, max_shard_size="2MB")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.add_special_tokens({"pad_token": "<pad>"})
    assert tok.convert_tokens_to_ids(["<image>", "<pad>"]) == [IMAGE_ID, PAD_ID]
    tok.save_pretrained(str(root))
    if kind == "clip":
        processor = CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    else:
        processor = SiglipImageProcessorPil(size={"height": SIZE, "width": SIZE})
    processor.save_pretrained(str(root))
    (root / "chat_template.json").write_text(json.dumps({"chat_template": HUB_TEMPLATE}))
    return model


def relayout(src: Path, dst: Path, model: LlavaForConditionalGeneration, layout: str) -> Path:
    """A copy of ``src`` whose weights are ``model``'s state dict in one ``model.safetensors``, under
    transformers 5 names (``hf5``) or the transformers 4 names of the Hub releases (``hf4``)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = {}
    for key, tensor in model.state_dict().items():
        if layout == "hf4":
            key = next(key.replace(a, b, 1) for a, b in HF4.items() if key.startswith(a))
        tensors[key] = tensor.contiguous()
    assert any(k.startswith("vision_tower.vision_model." if layout == "hf4" else "model.vision_tower.") for k in tensors)
    save_file(tensors, dst / "model.safetensors")
    return dst


@pytest.fixture(scope="module")
def llava_dirs(tmp_path_factory, llama_tokenizer_dir) -> dict[str, tuple[LlavaForConditionalGeneration, Path]]:
    root = tmp_path_factory.mktemp("llava")
    out = {}
    for kind in ("clip", "siglip"):
        model = write_llava(root / kind, Path(llama_tokenizer_dir), kind)
        out[kind] = (model, root / kind)
    return out


def _edit(src: Path, dst: Path, name: str, **changes) -> Path:
    """A copy of ``src`` (weights linked) with ``name``'s JSON values changed (None deletes a key)."""
    shutil.copytree(src, dst, copy_function=lambda a, b: Path(b).symlink_to(Path(a).resolve())
                    if a.endswith(".safetensors") else shutil.copy(a, b))
    data = json.loads((dst / name).read_text())
    data.update(changes)
    (dst / name).write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    return dst


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("layout", ["hf4", "hf5", "saved"])
def test_llava_imports_with_transformers_logits(tmp_path, llava_dirs, kind, layout):
    """``saved``: the shards and index transformers' save_pretrained wrote."""
    hf, src = llava_dirs[kind]
    if layout != "saved":
        src = relayout(src, tmp_path / layout, hf, layout)
    out = write_saved_model(llava_source(src), tmp_path / "out")
    ours = load_model(out)
    processor = Processor.from_saved_model(out)
    assert processor.tokenizer.image_token_id == IMAGE_ID and ours.model_cfg.vocab_size == ROWS
    tok = processor.tokenizer
    ids = [tok.bos_id] + tok.encode("USER: ") + [IMAGE_ID] * ours.num_image_tokens
    ids = torch.tensor([ids + tok.encode("\nWhat is it? ASSISTANT:", continuation=True)])
    pixels = processor.image_transform(photo())[None]
    with torch.no_grad():
        expected = hf(input_ids=ids, pixel_values=pixels).logits
        got = ours(ids, pixels)
    assert ours.num_image_tokens == 16 and got.shape == expected.shape == (1, ids.shape[1], ROWS)
    assert (got - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_image_settings_equal_the_saved_image_processor(tmp_path, llava_dirs, kind):
    _, src = llava_dirs[kind]
    source = llava_source(src)
    assert source.vision.resize == ("center_crop" if kind == "clip" else "resize")
    out = write_saved_model(source, tmp_path / "out")
    reference = (CLIPImageProcessorPil if kind == "clip" else SiglipImageProcessorPil).from_pretrained(str(src))
    transform = Processor.from_saved_model(out).image_transform
    for image in (photo(), photo(37, 53)):
        expected = reference(images=image, return_tensors="pt")["pixel_values"][0]
        assert (transform(image) - expected).abs().max() <= 1e-5


def test_llava_pad_to_square_maps_to_pad(tmp_path, llava_dirs):
    _, src = llava_dirs["clip"]
    LlavaImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
                           do_pad=True).save_pretrained(str(tmp_path / "proc"))
    padded = _edit(src, tmp_path / "padded", "preprocessor_config.json",
                   **json.loads((tmp_path / "proc" / "preprocessor_config.json").read_text()))
    out = write_saved_model(llava_source(padded), tmp_path / "out")
    assert read_sections(out)[1].resize == "pad"
    reference = LlavaImageProcessorPil.from_pretrained(str(padded))
    transform = Processor.from_saved_model(out).image_transform
    for image in (photo(), photo(37, 53)):
        assert (transform(image) - reference(images=image, return_tensors="pt")["pixel_values"][0]).abs().max() <= 1e-5


def test_cli_convert_llava_and_auto(tmp_path, llava_dirs):
    _, src = llava_dirs["clip"]
    assert main(["convert", "llava", "--model", str(src), "--out", str(tmp_path / "a"), "--dtype", "bf16"]) == 0
    assert load_model(tmp_path / "a").llm.norm.weight.dtype == torch.bfloat16
    assert main(["convert", "auto", str(src), "--out", str(tmp_path / "b")]) == 0
    assert "chat template: llava_v1" in (tmp_path / "b" / "README.md").read_text()


def test_chat_templates_are_recognised_or_logged(tmp_path, llava_dirs, caplog):
    _, src = llava_dirs["clip"]
    caplog.set_level(logging.INFO, logger="mmtune.formats.convert_llava")
    assert chat_template_name(src) == "llava_v1"
    from mmtune.formats.chat_templates import LLAVA_V1

    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "chat_template.jinja").write_text(LLAVA_V1)
    assert chat_template_name(tmp_path / "ours") == "llava_v1"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"}))
    assert chat_template_name(tmp_path / "other") is None
    assert "not LLaVA-1.5's USER/ASSISTANT format (renders '[INST] <image>\\nQ [/INST]')" in caplog.text
    (tmp_path / "none").mkdir()
    assert chat_template_name(tmp_path / "none") is None
    assert "no chat template; choose one with --template" in caplog.text


@pytest.mark.parametrize(("name", "changes", "message"), [
    ("config.json", {"vision_feature_layer": [-2, -1]}, "vision_feature_layer \\[-2, -1\\] concatenates several layers"),
    ("config.json", {"projector_hidden_act": "relu"}, "projector_hidden_act 'relu' is not supported"),
    ("config.json", {"multimodal_projector_bias": False}, "multimodal_projector_bias false is not supported"),
    ("config.json", {"vision_feature_select_strategy": "full"},
     "vision_feature_select_strategy 'full' with a clip tower is not supported"),
    ("config.json", {"image_token_index": PAD_ID}, f"the tokenizer's <image> is id {IMAGE_ID} but config.json has "
                                                   f"image_token_index {PAD_ID}"),
    ("config.json", {"vision_config": {"model_type": "dinov2"}}, "vision_config model_type 'dinov2' is not supported"),
    ("preprocessor_config.json", {"crop_size": {"height": 24, "width": 24}}, "resizing to 32 then cropping 24"),
    ("preprocessor_config.json", {"resample": 2}, "resample 2 is not supported"),
    ("preprocessor_config.json", {"size": {"shortest_edge": 48}, "crop_size": {"height": 48, "width": 48}},
     "image size 48 differs from the vision tower's image_size 32"),
    ("preprocessor_config.json", {"size": {"height": 32, "width": 48}, "do_center_crop": False}, "is not square"),
])
def test_what_cannot_be_mapped_is_one_clear_error(tmp_path, llava_dirs, name, changes, message):
    _, src = llava_dirs["clip"]
    with pytest.raises(CheckpointError, match=message):
        llava_source(_edit(src, tmp_path / "bad", name, **changes))


def test_siglip_with_the_default_strategy_is_refused(tmp_path, llava_dirs):
    _, src = llava_dirs["siglip"]
    bad = _edit(src, tmp_path / "bad", "config.json", vision_feature_select_strategy="default")
    with pytest.raises(CheckpointError, match="'default' with a siglip tower is not supported"):
        llava_source(bad)


def test_missing_shard_is_named(tmp_path, llava_dirs):
    _, src = llava_dirs["clip"]
    dst = shutil.copytree(src, tmp_path / "copy")
    victim = sorted(set(json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"].values()))[1]
    (dst / victim).unlink()
    with pytest.raises(CheckpointError, match=f"missing shards named by the index: \\['{victim}'\\]"):
        llava_source(dst)
    assert main(["convert", "llava", "--model", str(dst), "--out", str(tmp_path / "out")]) == 2


def test_a_tokenizer_without_image_gets_it_at_image_token_index(tmp_path, llava_dirs, llama_tokenizer_dir):
    _, src = llava_dirs["clip"]
    dst = shutil.copytree(src, tmp_path / "plain", ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*"))
    shutil.copy(Path(llama_tokenizer_dir) / "tokenizer.model", dst / "tokenizer.model")  # 32000 tokens, no <image>
    out = write_saved_model(llava_source(dst), tmp_path / "out")
    assert read_sections(out)[3] == IMAGE_ID
