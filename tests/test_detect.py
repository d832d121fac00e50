"""``formats.detect``: every accepted format is recognised from its files and opened as a Source; anything
else is one line naming what was found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from mmtune.cli import main
from mmtune.errors import CheckpointError
from mmtune.formats.detect import detect_format, open_source
from test_convert_llava import write_llava
from test_convert_meta import _tiny_cfg, write_meta_release

FIXTURES = Path(__file__).parent / "fixtures"


def test_saved_models_and_training_checkpoints(tmp_path):
    assert detect_format(FIXTURES / "saved_model_v1") == "saved"
    assert detect_format(FIXTURES / "saved_model_v1_sharded") == "saved"
    assert open_source(FIXTURES / "saved_model_v1").description.startswith("mmtune saved model")
    step = FIXTURES / "checkpoint_v1" / "step_00000002"
    assert detect_format(step) == "checkpoint"
    with pytest.raises(CheckpointError, match="a training checkpoint"):
        open_source(step)


def test_convert_auto_refuses_training_checkpoints(tmp_path, capsys):
    step = FIXTURES / "checkpoint_v1" / "step_00000002"
    assert main(["convert", "auto", str(step), "--out", str(tmp_path / "out")]) == 2
    assert f"mmtune export {step} --out OUT" in capsys.readouterr().err


def test_meta_hf_llava_and_accessory(tmp_path, llama_tokenizer_dir):
    tok = Path(llama_tokenizer_dir)
    write_meta_release(tmp_path / "meta", _tiny_cfg(vocab_size=32000), 2, tok / "tokenizer.model")
    assert detect_format(tmp_path / "meta") == "meta"
    assert open_source(tmp_path / "meta").model.n_layers == 2
    LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=4)).save_pretrained(tmp_path / "hf")
    assert detect_format(tmp_path / "hf") == "hf"
    assert open_source(tmp_path / "hf").vision.kind == "none"
    write_llava(tmp_path / "llava", tok)
    assert detect_format(tmp_path / "llava") == "llava"
    assert open_source(tmp_path / "llava").vision.kind == "clip"
    (tmp_path / "acc").mkdir()  # recognised by its shard names alone (a real one: tests/test_convert_accessory.py)
    (tmp_path / "acc" / "consolidated.00-of-01.model.pth").write_bytes(b"")
    assert detect_format(tmp_path / "acc") == "accessory"


def test_what_is_not_a_model_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="nope: no such file or directory"):
        detect_format(tmp_path / "nope")
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="weights.safetensors: a file, not a model directory"):
        detect_format(tmp_path / "weights.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="found an empty directory; accepted: an mmtune saved model"):
        detect_format(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="found notes.txt; accepted: "):
        detect_format(tmp_path / "other")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="config.json has model_type 'bert'; accepted: ") as err:
        detect_format(tmp_path / "bert")
    assert "\n" not in str(err.value)
