"""The qformer architecture (LLaMA2-Accessory's ``llama_qformerv2``) exported as a self-contained
transformers model: AutoModelForCausalLM / AutoProcessor with ``trust_remote_code`` answer as mmtune's
engine for every ``vision.resize`` mode on wide and tall images; bf16 exports load and generate."""

from __future__ import annotations

import ast
import json
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

from data_factory import photo
from export_factory import same_answer, tiny_model_dir
from mmtune.cli import main
from mmtune.errors import CheckpointError
from mmtune.formats.export_hf import export
from mmtune.formats.export_remote import REMOTE
from mmtune.inference.engine import Engine

IMAGES = (photo(53, 37), photo(37, 53))  # wide, tall
ROOT = Path(__file__).parent.parent


def _load(out: Path):
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    return model, AutoProcessor.from_pretrained(out, trust_remote_code=True)


@pytest.mark.parametrize("mode", ["center_crop", "resize", "pad"])
def test_qformer_export_answers_as_mmtune(tmp_path, llama_tokenizer_dir, mode):
    src = tiny_model_dir(tmp_path / "model", Path(llama_tokenizer_dir), "debug-blip2", resize=mode)
    out = export(src, tmp_path / "hf", fmt="hf")
    assert {"modeling_mmtune_qformer.py", "generation_config.json", "preprocessor_config.json",
            "processor_config.json"} <= {p.name for p in out.iterdir()}
    hf, processor = _load(out)
    assert type(hf).__name__ == "MMTuneQFormerForCausalLM" and type(processor).__name__ == "MMTuneQFormerProcessor"
    assert hf.config.vocab_size == 32000  # the decoder's own: image positions are masked before the lookup
    engine = Engine.from_dir(src, template="alpaca")
    for image in IMAGES:
        same_answer(engine, hf, processor, image)
    card = (out / "README.md").read_text()
    assert f"- image mode: vision.resize {mode}" in card and "- chat template: mmtune's alpaca" in card
    assert "- dtype: float32" in card and f"mmtune generate --model {src} --template alpaca" in card


def test_bf16_qformer_export_loads_and_generates(tmp_path, llama_tokenizer_dir):
    src = tiny_model_dir(tmp_path / "model", Path(llama_tokenizer_dir), "debug-blip2")
    assert main(["export", str(src), "--out", str(tmp_path / "hf"), "--format", "hf", "--dtype", "bf16"]) == 0
    hf, processor = _load(tmp_path / "hf")
    assert hf.dtype == torch.bfloat16 and "- dtype: bfloat16" in (tmp_path / "hf" / "README.md").read_text()
    inputs = processor(text=processor.apply_chat_template([{"role": "user", "content": "What is it?"}]),
                       images=IMAGES[0], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()  # BOS once (the chat template has it), then the image run
    n = processor.num_image_tokens  # num_query_tokens + 2
    assert ids[0] == processor.tokenizer.bos_token_id and ids[1:n + 1] == [hf.config.image_token_id] * n == [32000] * 6
    assert ids[n + 1] != processor.tokenizer.bos_token_id
    with torch.no_grad():
        answer = hf.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert answer.shape[1] > inputs["input_ids"].shape[1]


def test_the_modeling_file_is_standalone_package_data():
    imported = set()
    for node in ast.walk(ast.parse(REMOTE.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported == {"__future__", "typing", "torch", "transformers"}
    data = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1]
    patterns = ast.literal_eval(data.split("mmtune = ", 1)[1].splitlines()[0])  # (tomllib needs Python 3.11)
    relative = REMOTE.relative_to(ROOT / "src" / "mmtune").as_posix()
    assert any(fnmatch(relative, p) for p in patterns)


def test_a_template_without_a_chat_template_is_refused(tmp_path, llama_tokenizer_dir):
    src = tiny_model_dir(tmp_path / "model", Path(llama_tokenizer_dir), "debug-blip2")
    with pytest.raises(CheckpointError, match="template 'caption' has no chat template for an export"):
        export(src, tmp_path / "hf", fmt="hf", template="caption")
    assert main(["export", str(src), "--out", str(tmp_path / "hf"), "--format", "hf", "--template", "caption"]) == 2
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())
    assert json.loads((src / "config.json").read_text())["connector"]["kind"] == "qformer"


def test_the_chat_template_defaults_to_the_runs_template(tmp_path, llama_tokenizer_dir):
    src = tiny_model_dir(tmp_path / "model", Path(llama_tokenizer_dir), "debug-blip2")
    (src / "config.yaml").write_text("data:\n  template: llava_v1\n")
    out = export(src, tmp_path / "hf", fmt="hf")
    assert "- chat template: mmtune's llava_v1" in (out / "README.md").read_text()
    assert "USER:" in (out / "chat_template.jinja").read_text()
