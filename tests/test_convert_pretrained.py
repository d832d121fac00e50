"""``load_pretrained`` (training.init_from): format detection and the same weights from every format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmtune.checkpoints.convert_meta import meta_source
from mmtune.checkpoints.pipeline import write_saved_model
from mmtune.checkpoints.pretrained import detect_format, load_pretrained
from mmtune.errors import CheckpointError
from tests.test_convert_meta import _tiny_cfg, write_meta_release


def test_every_format_gives_the_same_state_dict(tmp_path, llama_tokenizer_dir):
    tokenizer = Path(llama_tokenizer_dir) / "tokenizer.model"
    original = write_meta_release(tmp_path / "meta", _tiny_cfg(), 2, tokenizer)
    write_saved_model(meta_source(tmp_path / "meta" / "params.json", tmp_path / "meta"), tmp_path / "saved")
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmtune.models.adapters.hf_llama import to_hf_config, to_hf_state_dict

    hf = LlamaForCausalLM(LlamaConfig(**to_hf_config(_tiny_cfg())))
    hf.load_state_dict(to_hf_state_dict({k: v.float() for k, v in original.state_dict().items()}, _tiny_cfg()))
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    for name, kind in (("meta", "meta"), ("saved", "mmtune"), ("hf", "hf")):
        assert detect_format(tmp_path / name) == kind
        loaded = load_pretrained(tmp_path / name)
        assert loaded.format == kind and loaded.sections["model"].dim == 64
        assert set(loaded.state_dict) == {f"llm.{k}" for k in original.state_dict()}
        for key, tensor in original.state_dict().items():
            assert torch.equal(loaded.state_dict[f"llm.{key}"].float(), tensor.float()), (name, key)
    assert load_pretrained(tmp_path / "saved").image_token_id == 32000


def test_unknown_directory_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not an mmtune model, training checkpoint, Meta release"):
        load_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_pretrained(tmp_path / "absent")
