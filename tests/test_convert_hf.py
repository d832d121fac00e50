"""Hugging Face Llama / Mistral / Qwen2 directories -> mmtune: logits parity with transformers, shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from mmtune.cli import main
from mmtune.errors import CheckpointError
from mmtune.formats.convert_hf import hf_source
from mmtune.formats.pipeline import write_saved_model
from mmtune.models.io import load_model

VOCAB = 32000
SIZES = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)


def _save(model: torch.nn.Module, root: Path, tokenizer_dir: Path, shard: str = "50MB") -> Path:
    model.save_pretrained(root, max_shard_size=shard)
    shutil.copy(tokenizer_dir / "tokenizer.model", root / "tokenizer.model")
    return root


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_hf_model_converts_with_transformers_logits(tmp_path, llama_tokenizer_dir, family):
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**SIZES, rope_theta=500000.0))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(**SIZES, sliding_window=None))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**SIZES, tie_word_embeddings=True))
    model.eval()
    src = _save(model, tmp_path / "hf", Path(llama_tokenizer_dir), shard="2MB")
    if family == "llama":
        assert (src / "model.safetensors.index.json").is_file()  # sharded with an index
    if family == "qwen2":  # transformers would pick Qwen's tokenizer class for the LLaMA tokenizer.model
        (src / "tokenizer.model").unlink()
    out = write_saved_model(hf_source(src), tmp_path / "out", tokenizer_path=llama_tokenizer_dir)
    ours = load_model(out)
    assert ours.model_cfg.qkv_bias == (family == "qwen2") and ours.model_cfg.tie_embeddings == (family == "qwen2")
    tokens = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        expected = model(tokens).logits
        got = ours(tokens)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_cli_convert_hf_and_missing_shard(tmp_path, llama_tokenizer_dir):
    model = LlamaForCausalLM(LlamaConfig(**SIZES))
    src = _save(model, tmp_path / "hf", Path(llama_tokenizer_dir), shard="2MB")
    assert main(["convert", "hf", "--model", str(src), "--out", str(tmp_path / "out"), "--dtype", "bf16"]) == 0
    assert load_model(tmp_path / "out").llm.norm.weight.dtype == torch.bfloat16
    index = json.loads((src / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (src / victim).unlink()
    with pytest.raises(CheckpointError, match=f"missing shards named by the index: \\['{victim}'\\]"):
        hf_source(src)
    assert main(["convert", "hf", "--model", str(src), "--out", str(tmp_path / "out2")]) == 2


def test_unsupported_and_foreign_checkpoints(tmp_path, llama_tokenizer_dir):
    model = LlamaForCausalLM(LlamaConfig(**SIZES))
    src = _save(model, tmp_path / "hf", Path(llama_tokenizer_dir))
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="model_type 'gpt2' is not one of llama, mistral, qwen2"):
        hf_source(src)
    (src / "config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    state = load_file(str(src / "model.safetensors"))
    state["model.vision_tower.x"] = torch.zeros(1)
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected keys.*model.vision_tower.x"):
        write_saved_model(hf_source(src), tmp_path / "out")
    (src / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        write_saved_model(hf_source(src), tmp_path / "out")
