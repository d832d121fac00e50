"""Saved-model directories: round trips, shards, tied embeddings, tower self-containment, bad dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, CLIPVisionModel

import mmtune
from mmtune import presets
from mmtune.config import Config, build
from mmtune.errors import CheckpointError
from mmtune.models.io import load_model, load_tokenizer, save_model
from mmtune.models.tokenizer import Tokenizer
from mmtune.models.vlm import VisionLanguageModel, build_model
from mmtune.models.weights import read_weights

LLM = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 32000, "max_seq_len": 64}


@pytest.fixture(scope="module")
def tokenizer_dir(llama_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LLaMA tokenizer converted once to tokenizer.json (much faster to load than tokenizer.model)."""
    directory = tmp_path_factory.mktemp("tokenizer")
    Tokenizer.from_path(llama_tokenizer_dir).save(directory)
    return directory


def make(tower: str | None = "debug-clip", kind: str = "mlp", **model: object) -> VisionLanguageModel:
    values: dict = {"model": {**LLM, **model}}
    if tower:
        values.update(vision={"preset": tower}, connector={"kind": kind})
    return build_model(build(Config, values), image_token_id=32000).eval()


def batch(model: VisionLanguageModel) -> tuple[torch.Tensor, torch.Tensor | None]:
    ids = torch.randint(0, 500, (2, model.num_image_tokens + 6))
    if model.vision is None:
        return ids, None
    ids[:, 1:1 + model.num_image_tokens] = model.image_token_id
    return ids, torch.randn(2, 3, 32, 32)


def assert_same_outputs(a: VisionLanguageModel, b: VisionLanguageModel) -> None:
    ids, pixels = batch(a)
    with torch.no_grad():
        torch.testing.assert_close(a(ids, pixels), b(ids, pixels), atol=0, rtol=0)


@pytest.mark.parametrize("tower,kind", [("debug-clip", "mlp"), ("debug-siglip", "mlp"), ("debug-blip2", "qformer"),
                                        (None, "mlp")])
def test_round_trip_gives_equal_outputs(tmp_path: Path, tower: str | None, kind: str) -> None:
    model = make(tower, kind)
    save_model(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = load_model(tmp_path)
    assert not loaded.training and loaded.num_image_tokens == model.num_image_tokens
    assert_same_outputs(model, loaded)


def test_sharded_save_with_index(tmp_path: Path) -> None:
    model = make()
    save_model(model, tmp_path, max_shard_bytes=2_000_000)
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert_same_outputs(model, load_model(tmp_path))
    save_model(model, tmp_path)  # a later single-file save removes the stale shards
    assert not list(tmp_path.glob("model-*-of-*.safetensors")) and (tmp_path / "model.safetensors").is_file()


def test_tied_embeddings_stay_tied(tmp_path: Path) -> None:
    model = make(None, tie_embeddings=True)
    save_model(model, tmp_path)
    assert "llm.output.weight" not in read_weights(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.llm.output.weight is loaded.llm.tok_embeddings.weight
    assert_same_outputs(model, loaded)


def test_dtype_device_tokenizer_and_card(tmp_path: Path, tokenizer_dir: Path) -> None:
    model = make()
    tokenizer = Tokenizer.from_path(tokenizer_dir)
    save_model(model, tmp_path, tokenizer=tokenizer, card="# my card\n")
    assert (tmp_path / "README.md").read_text() == "# my card\n"
    loaded = mmtune.load_model(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    assert loaded.llm.rope_cos.dtype == torch.float32
    again = load_tokenizer(tmp_path)
    assert again.image_token_id == loaded.image_token_id == 32000
    assert again.encode("a photo of a cat") == tokenizer.encode("a photo of a cat")


def test_default_card_describes_the_model(tmp_path: Path) -> None:
    save_model(make("debug-blip2", "qformer"), tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "vision tower `blip2`" in card and "connector `qformer`" in card and "6 positions per image" in card


def test_saved_dir_is_self_contained(tmp_path: Path) -> None:
    """A model whose tower came from vision.path (with its own preprocessor values) loads without it."""
    tower_dir = tmp_path / "clip"
    CLIPVisionModel(CLIPVisionConfig(**presets.VISION_PRESETS["debug-clip"]["hf_config"])).save_pretrained(tower_dir)
    (tower_dir / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3]}))
    cfg = build(Config, {"model": LLM, "vision": {"kind": "clip", "path": str(tower_dir)}})
    model = build_model(cfg, image_token_id=32000).eval()
    save_model(model, tmp_path / "out")
    for path in tower_dir.iterdir():
        path.unlink()
    tower_dir.rmdir()
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["vision"]["path"] is None and saved["vision"]["image_mean"] == [0.1, 0.2, 0.3]
    assert saved["vision"]["hf_config"]["hidden_size"] == 32 and saved["format_version"] == 1
    assert_same_outputs(model, load_model(tmp_path / "out"))


def test_bad_directories_raise_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a directory"):
        load_model(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not an mmtune saved-model config"):
        load_model(tmp_path)
    save_model(make(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(tmp_path)


def test_key_and_shape_problems_are_listed(tmp_path: Path) -> None:
    model = make()
    save_model(model, tmp_path / "a")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    config["model"]["n_layers"] = 3
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing keys: llm\.layers\.2\."):
        load_model(tmp_path / "a")
    config["model"].update(n_layers=2, dim=128)
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"25 shape mismatches: connector.linear_1.bias: saved \[64\] vs model \[128\]"):
        load_model(tmp_path / "a")
    llm = {f"llm.{k}": v for k, v in model.llm.state_dict().items()}
    save_model(make(None), tmp_path / "b", state_dict={**llm, "extra.weight": torch.ones(1)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: extra\.weight"):
        load_model(tmp_path / "b")
    config["model"]["dim"] = -1
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config field 'model.dim': got -1"):
        load_model(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-9.safetensors"}}))
    with pytest.raises(CheckpointError, match="shard model-9.safetensors named in the index is missing"):
        read_weights(tmp_path / "a")


def test_init_command_writes_a_seeded_model_dir(tmp_path: Path, tokenizer_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from mmtune.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text("model: {preset: debug, n_layers: 1}\nvision: {preset: debug-blip2}\n"
                      "connector: {kind: qformer}\ntraining: {seed: 7}\n")
    common = [str(config), "--tokenizer", str(tokenizer_dir)]
    assert main(["init", *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["init", *common, "--out", str(tmp_path / "b")]) == 0
    assert main(["init", *common, "--out", str(tmp_path / "c"), "--training.seed", "8"]) == 0
    a, b, c = (read_weights(tmp_path / name) for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["llm.tok_embeddings.weight"], c["llm.tok_embeddings.weight"])
    model, tokenizer = load_model(tmp_path / "a"), load_tokenizer(tmp_path / "a")
    assert model.image_token_id == tokenizer.image_token_id == 32000 and model.num_image_tokens == 6
    capsys.readouterr()
    assert main(["init", *common, "--out", str(tmp_path / "d"), "--model.vocab_size", "100"]) == 2
    assert "model.vocab_size" in capsys.readouterr().err and not (tmp_path / "d").exists()
    assert main(["init", str(config), "--out", str(tmp_path / "e")]) == 2
    assert "tokenizer.path" in capsys.readouterr().err


def test_corrupt_weights_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    save_model(make(None), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path)


@pytest.mark.parametrize("name", ["saved_model_v1", "saved_model_v1_sharded"])
def test_directories_written_by_older_mmtune_still_load(name: str) -> None:
    """Directories written at d4ae1c8 (tests/fixtures/saved_model_v1/README.md) load and give the logits
    recorded when they were written."""
    directory = Path(__file__).parent / "fixtures" / name
    expected = load_file(str(directory / "expected.safetensors"))
    model = load_model(directory)
    with torch.no_grad():
        logits = model(expected["input_ids"], expected.get("pixel_values"))
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=1e-5)
