"""``mmtune export`` of a DCP training checkpoint: saved model with the same weights, card with the run's
recipe and last metrics, and straight to the LLaVA format."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration

from mmtune.cli import main
from mmtune.config import load_config, save_config
from mmtune.models.io import load_model
from mmtune.models.tokenizer import Tokenizer
from mmtune.models.vlm import build_model
from mmtune.training.checkpoint import save_checkpoint


def _run_with_checkpoint(run: Path, tokenizer_dir: Path) -> torch.nn.Module:
    cfg = load_config(None, ["--model.preset", "debug", "--vision.preset", "debug-clip",
                             "--tokenizer.path", str(tokenizer_dir), "--training.output_dir", str(run),
                             "--training.lr", "2e-5", "--data.sources", "[{path: 'shapes/{00000..00003}.tar'}]"])
    tok = Tokenizer.from_path(tokenizer_dir)
    model = build_model(cfg, tok.image_token_id, device="cpu")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def extras(d: Path) -> None:
        save_config(cfg, d / "config.yaml")
        tok.save(d / "tokenizer")

    save_checkpoint(run, 7, model, optimizer, trainer_state={"step": 7},
                    info={"image_token_id": tok.image_token_id, "world_size": 1}, write_extras=extras,
                    keep_last=2, is_main=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 6, "loss": 2.5}) + "\n"
                                       + json.dumps({"step": 7, "loss": 2.25}) + "\n")
    return model


def test_training_checkpoint_exports_to_mmtune_and_llava(tmp_path, llama_tokenizer_dir):
    model = _run_with_checkpoint(tmp_path / "run", Path(llama_tokenizer_dir))
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "release")]) == 0
    loaded = load_model(tmp_path / "release")
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    card = (tmp_path / "release" / "README.md").read_text()
    assert "| train.loss | 2.25 |" in card and "`shapes/{00000..00003}.tar`" in card and "lr 2e-05" in card
    ckpt = next((tmp_path / "run" / "checkpoints").iterdir())
    assert main(["export", str(ckpt), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert hf.config.image_token_id == loaded.image_token_id
    assert "| train.loss | 2.25 |" in (tmp_path / "hf" / "README.md").read_text()
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


def test_export_casts_with_dtype_tensor_by_tensor_and_reads_its_own_hf_output(tmp_path, llama_tokenizer_dir):
    from safetensors import safe_open

    model = _run_with_checkpoint(tmp_path / "run", Path(llama_tokenizer_dir))
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "bf16"), "--dtype", "bf16"]) == 0
    loaded = load_model(tmp_path / "bf16")
    for key, tensor in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == torch.bfloat16 and torch.equal(loaded.state_dict()[key],
                                                                                tensor.to(torch.bfloat16)), key
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--format", "hf", "--dtype",
                 "fp16"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "float16"
    with safe_open(str(next((tmp_path / "hf").glob("*.safetensors"))), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    # the Hugging Face export is itself a model mmtune reads: back to a saved model with the fp16 weights
    assert main(["export", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back = load_model(tmp_path / "back")
    for key, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor.to(torch.float16)), key
