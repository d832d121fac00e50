"""Meta's LLaMA release -> mmtune: shard merging, params.json, logits parity, safety and clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from mmtune.cli import main
from mmtune.config import ModelConfig
from mmtune.errors import CheckpointError
from mmtune.formats.convert_meta import meta_source
from mmtune.formats.pipeline import write_saved_model
from mmtune.formats.reading import load_torch
from mmtune.models.adapters import meta
from mmtune.models.io import load_model
from mmtune.models.llama import Transformer

VOCAB = 32000


def _tiny_cfg(**kw) -> ModelConfig:
    values = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, multiple_of=32, max_seq_len=128)
    return ModelConfig(**{**values, **kw})


def write_meta_release(root: Path, cfg: ModelConfig, n_shards: int, tokenizer: Path) -> Transformer:
    """A tiny model written exactly as Meta ships one: params.json (vocab -1), consolidated.NN.pth
    fairscale slices (bf16, with the cached ``rope.freqs``), tokenizer.model."""
    model = Transformer(cfg)
    model.init_weights()
    model = model.to(torch.bfloat16)
    root.mkdir(parents=True, exist_ok=True)
    params = meta.params_from_config(cfg)
    params["vocab_size"] = -1
    (root / "params.json").write_text(json.dumps(params))
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(n_shards)]
    for name, tensor in model.state_dict().items():
        for shard, piece in zip(shards, meta.split_for_model_parallel(tensor, meta.shard_dim(name), n_shards)):
            shard[name] = piece
    for i, shard in enumerate(shards):
        shard["rope.freqs"] = torch.ones(cfg.dim // cfg.n_heads // 2)
        torch.save(shard, root / f"consolidated.{i:02d}.pth")
    (root / "tokenizer.model").write_bytes(tokenizer.read_bytes())
    return model


@pytest.fixture
def tok_model(llama_tokenizer_dir) -> Path:
    return Path(llama_tokenizer_dir) / "tokenizer.model"


def test_shard_dims_follow_fairscale():
    assert meta.shard_dim("layers.3.attention.wq.weight") == 0
    assert meta.shard_dim("layers.3.attention.wk.weight") == 0
    assert meta.shard_dim("layers.3.feed_forward.w3.weight") == 0
    assert meta.shard_dim("output.weight") == 0
    assert meta.shard_dim("layers.3.attention.wo.weight") == 1
    assert meta.shard_dim("layers.3.feed_forward.w2.weight") == 1
    assert meta.shard_dim("tok_embeddings.weight") == 1
    assert meta.shard_dim("layers.3.attention_norm.weight") is None
    assert meta.shard_dim("norm.weight") is None


def test_params_json_fields():
    params = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
              "multiple_of": 1024, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0,
              "use_scaled_rope": True}
    cfg = meta.config_from_params(params, vocab_size=128256)
    assert (cfg.dim, cfg.n_kv_heads, cfg.multiple_of, cfg.ffn_dim_multiplier) == (4096, 8, 1024, 1.3)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling == meta.LLAMA31_SCALING
    llama2 = meta.config_from_params({"dim": 5120, "n_layers": 40, "n_heads": 40, "multiple_of": 256,
                                      "norm_eps": 1e-05, "vocab_size": -1}, vocab_size=32000)
    assert llama2.vocab_size == 32000 and llama2.rope_scaling is None and llama2.n_kv_heads is None
    with pytest.raises(CheckpointError, match="unknown fields.*'hidden'"):
        meta.config_from_params({**params, "hidden": 3})
    with pytest.raises(CheckpointError, match="vocab_size 128256 but the checkpoint embeds 32000"):
        meta.config_from_params(params, vocab_size=32000)


@pytest.mark.parametrize("n_shards", [1, 2])
def test_meta_release_converts_with_identical_logits(tmp_path, tok_model, n_shards):
    cfg = _tiny_cfg()
    original = write_meta_release(tmp_path / "meta", cfg, n_shards, tok_model)
    out = write_saved_model(meta_source(tmp_path / "meta" / "params.json", tmp_path / "meta"), tmp_path / "out")
    loaded = load_model(out)
    assert loaded.model_cfg.vocab_size == VOCAB and loaded.model_cfg.n_kv_heads == 2
    assert loaded.llm.tok_embeddings.weight.dtype == torch.bfloat16
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.llm.state_dict()[name], tensor), name
    tokens = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), original(tokens))
    assert len(loaded.llm.state_dict()) == len(original.state_dict())
    assert (out / "README.md").read_text().startswith("# mmtune model (converted)")
    assert not (tmp_path / "out.partial").exists()


def test_output_is_sharded_when_large(tmp_path, tok_model):
    write_meta_release(tmp_path / "meta", _tiny_cfg(), 2, tok_model)
    source = meta_source(tmp_path / "meta" / "params.json", tmp_path / "meta")
    out = write_saved_model(source, tmp_path / "out", max_shard_bytes=3_000_000, dtype=torch.float32)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) >= 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert load_model(out).llm.output.weight.dtype == torch.float32


def test_cli_convert_meta(tmp_path, tok_model):
    write_meta_release(tmp_path / "meta", _tiny_cfg(), 2, tok_model)
    rc = main(["convert", "meta", "--params", str(tmp_path / "meta" / "params.json"), "--ckpt-dir",
               str(tmp_path / "meta"), "--tokenizer", str(tok_model), "--out", str(tmp_path / "out")])
    assert rc == 0 and (tmp_path / "out" / "config.json").is_file()
    rc = main(["convert", "meta", "--params", str(tmp_path / "meta" / "params.json"), "--ckpt-dir",
               str(tmp_path / "meta"), "--out", str(tmp_path / "out")])
    assert rc == 2  # the output exists


def test_missing_shard_is_named(tmp_path, tok_model):
    write_meta_release(tmp_path / "meta", _tiny_cfg(), 2, tok_model)
    (tmp_path / "meta" / "consolidated.01.pth").unlink()
    (tmp_path / "meta" / "consolidated.02.pth").write_bytes((tmp_path / "meta" / "consolidated.00.pth").read_bytes())
    with pytest.raises(CheckpointError, match=r"missing shards \[1\] of 3"):
        meta_source(tmp_path / "meta" / "params.json", tmp_path / "meta")


def test_shape_mismatch_is_reported(tmp_path, tok_model):
    write_meta_release(tmp_path / "meta", _tiny_cfg(), 1, tok_model)
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    (tmp_path / "meta" / "params.json").write_text(json.dumps({**params, "n_kv_heads": 4}))
    source = meta_source(tmp_path / "meta" / "params.json", tmp_path / "meta")
    with pytest.raises(CheckpointError, match=r"shape mismatches.*llm.layers.0.attention.wk.weight \(32, 64\) != \(64, 64\)"):
        write_saved_model(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_and_missing_keys_are_reported(tmp_path, tok_model):
    write_meta_release(tmp_path / "meta", _tiny_cfg(), 1, tok_model)
    path = tmp_path / "meta" / "consolidated.00.pth"
    state = torch.load(path, weights_only=True)
    state["layers.0.attention.wz.weight"] = torch.zeros(2)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"unknown keys.*llm.layers.0.attention.wz.weight"):
        write_saved_model(meta_source(tmp_path / "meta" / "params.json", tmp_path / "meta"), tmp_path / "o1")
    del state["layers.0.attention.wz.weight"], state["norm.weight"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys.*llm.norm.weight"):
        write_saved_model(meta_source(tmp_path / "meta" / "params.json", tmp_path / "meta"), tmp_path / "o2")


def test_vocabulary_mismatch_is_reported(tmp_path, tok_model):
    write_meta_release(tmp_path / "meta", _tiny_cfg(vocab_size=1000), 1, tok_model)
    source = meta_source(tmp_path / "meta" / "params.json", tmp_path / "meta")
    with pytest.raises(CheckpointError, match="vocabulary mismatch.*32001 tokens but the checkpoint embeds 1000"):
        write_saved_model(source, tmp_path / "out")


class _RunsCode:
    def __reduce__(self):
        return (os.makedirs, (self.target,))

    def __init__(self, target: str):
        self.target = target


def test_pickle_that_runs_code_is_refused(tmp_path, tok_model):
    write_meta_release(tmp_path / "meta", _tiny_cfg(), 1, tok_model)
    marker = tmp_path / "code-ran"
    path = tmp_path / "meta" / "consolidated.00.pth"
    state = torch.load(path, weights_only=True)
    state["evil"] = _RunsCode(str(marker))
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="refused to load, it holds more than tensors"):
        meta_source(tmp_path / "meta" / "params.json", tmp_path / "meta")
    with pytest.raises(CheckpointError, match="refused"):
        load_torch(path)
    assert not marker.exists()
    assert main(["convert", "meta", "--params", str(tmp_path / "meta" / "params.json"), "--ckpt-dir",
                 str(tmp_path / "meta"), "--out", str(tmp_path / "out")]) == 2
    assert not marker.exists()
