"""Every accepted format, everywhere a model is named: ``load_any`` (every ``--model``) reads each format with
exactly the weights its conversion writes, ``training.init_from`` starts a run from each one (fresh parts
from their per-unit seed, the tower from ``vision.path``), 2 ranks filling their own shards train exactly
as 1 rank does, and every bad start is one clear error."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from mmtune.config import ConnectorConfig, ModelConfig, VisionConfig
from mmtune.distributed.env import init_distributed, shutdown
from mmtune.errors import CheckpointError
from mmtune.formats.detect import open_source
from mmtune.formats.loading import load_any
from mmtune.formats.pipeline import write_saved_model
from mmtune.inference.engine import Engine
from mmtune.models.init import fresh_unit
from mmtune.models.io import load_model
from mmtune.models.vlm import build_model
from mmtune.presets import MODEL_PRESETS
from mmtune.training.trainer import RunParts, Trainer
from test_convert_llava import write_llava
from test_convert_meta import write_meta_release
from test_train_golden import _regen_module
from test_train_support import IMAGE_ID, ROOT, tiny_config

DEBUG = dict(vocab_size=32064, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=1024)
"""transformers' twin of the ``debug`` decoder preset."""


@pytest.fixture(scope="module")
def formats(tmp_path_factory, llama_tokenizer_dir) -> dict[str, Path]:
    """The ``debug`` decoder in Hugging Face, Meta and saved-model form, and a tiny LLaVA."""
    root = tmp_path_factory.mktemp("formats")
    tok = Path(llama_tokenizer_dir)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**DEBUG)).save_pretrained(root / "hf", max_shard_size="1MB")
    (root / "hf" / "tokenizer.model").write_bytes((tok / "tokenizer.model").read_bytes())
    write_meta_release(root / "meta", ModelConfig(**MODEL_PRESETS["debug"]), 2, tok / "tokenizer.model")
    write_saved_model(open_source(root / "hf"), root / "saved")
    write_llava(root / "llava", tok, "clip")
    return {"hf": root / "hf", "meta": root / "meta", "saved": root / "saved", "llava": root / "llava"}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, different[:5]


@pytest.mark.parametrize("kind", ["saved", "hf", "meta", "llava"])
def test_load_any_reads_each_format_as_its_conversion(formats, tmp_path, kind):
    converted = formats[kind] if kind == "saved" else write_saved_model(open_source(formats[kind]), tmp_path / "c")
    loaded = load_any(formats[kind])
    assert loaded.format == kind
    _assert_same(_state(loaded.model), _state(load_model(converted)))
    assert loaded.model.image_token_id == load_model(converted).image_token_id


def test_engine_answers_from_a_hugging_face_directory_as_from_its_conversion(formats, tmp_path):
    converted = write_saved_model(open_source(formats["hf"]), tmp_path / "c")
    prompts = [Engine.from_dir(path, template="none").processor.generation_prompt  # the same processor rule
               for path in (formats["hf"], converted)]
    assert prompts[0].__func__ is prompts[1].__func__
    from mmtune.data.records import Message
    from mmtune.inference.request import ChatRequest

    request = ChatRequest(messages=[Message("user", "a red square")], template="none", max_new_tokens=6)
    answers = [Engine.from_dir(path, template="none").generate(request).token_ids for path in (formats["hf"], converted)]
    assert answers[0] == answers[1]


def _trainer(cfg) -> Trainer:  # noqa: ANN001
    env = init_distributed(cfg.parallel.tp)

    def build(device: str) -> torch.nn.Module:
        return build_model(cfg, IMAGE_ID, device=device)

    return Trainer(cfg, env, RunParts(build, None, IMAGE_ID))


@pytest.mark.parametrize("kind", ["saved", "hf", "meta"])
def test_init_from_a_text_decoder_starts_stage1_with_a_fresh_connector(formats, tmp_path, kind):
    cfg = tiny_config(tmp_path, "--training.init_from", str(formats[kind]))
    trainer = _trainer(cfg)
    try:
        got = _state(trainer.model)
    finally:
        shutdown({"trainer": trainer})
    decoder = {f"llm.{k}": v for k, v in _state(load_any(formats[kind]).model.llm).items()}
    _assert_same({k: v for k, v in got.items() if k.startswith("llm.")}, decoder)
    plain = build_model(cfg, IMAGE_ID, device="meta")
    _assert_same({k: v for k, v in got.items() if k.startswith("connector.")},
                 fresh_unit(plain, "connector", cfg.training.seed))
    _assert_same({k: v for k, v in got.items() if k.startswith("vision.")},
                 fresh_unit(plain, "vision", cfg.training.seed))


def test_init_from_llava_takes_every_part(formats, tmp_path):
    source = open_source(formats["llava"])
    cfg = tiny_config(tmp_path, "--training.init_from", str(formats["llava"]))
    cfg = dataclasses.replace(cfg, model=source.model, connector=source.connector, vision=source.vision)
    trainer = _trainer(cfg)
    try:
        got = _state(trainer.model)
    finally:
        shutdown({"trainer": trainer})
    _assert_same(got, _state(load_any(formats["llava"]).model))


def test_a_fresh_tower_comes_from_vision_path(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=32, patch_size=8))
    tower.save_pretrained(tmp_path / "clip")
    cfg = tiny_config(tmp_path)
    cfg = dataclasses.replace(cfg, vision=VisionConfig(kind="clip", path=str(tmp_path / "clip")),
                              connector=ConnectorConfig(kind="mlp"))
    trainer = _trainer(cfg)
    try:
        got = _state(trainer.model.vision.vision_model)
    finally:
        shutdown({"trainer": trainer})
    _assert_same(got, {k: v for k, v in _state(tower).items() if not k.endswith("position_ids")})


def test_two_ranks_started_from_a_hugging_face_decoder_match_one_rank(formats, tmp_path):
    regen = _regen_module()
    world = regen.write_data(tmp_path / "world")
    config = str(ROOT / "configs" / "debug-stage2.yaml")
    args = [*regen.overrides(2, world, tmp_path / "one"), "--training.init_from", str(formats["hf"]),
            "--training.global_batch_size", "4", "--training.micro_batch_size", "1", "--training.max_steps", "2",
            "--training.save_every", "0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "mmtune", "train", config, *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two_args = [a.replace(str(tmp_path / "one"), str(tmp_path / "two")) for a in args]
    torchrun = Path(sys.executable).parent / "torchrun"
    two = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "mmtune", "train", config,
                          *two_args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "peak resident memory per rank" in two.stderr
    assert regen.losses(tmp_path / "two") == pytest.approx(regen.losses(tmp_path / "one"), abs=1e-5)


def test_what_is_not_a_model_is_one_line_naming_init_from(tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = tiny_config(tmp_path, "--training.init_from", str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match=r"^training\.init_from: .*empty: found an empty directory; accepted"):
        _trainer(cfg)


def test_a_decoder_missing_a_weight_is_refused_by_name(formats, tmp_path):
    broken = tmp_path / "broken"
    write_saved_model(open_source(formats["hf"]), broken)
    weights = load_file(broken / "model.safetensors")
    del weights["llm.layers.1.attention.wq.weight"]
    save_file(weights, broken / "model.safetensors")
    cfg = tiny_config(tmp_path, "--training.init_from", str(broken))
    with pytest.raises(CheckpointError, match=r"the llm part is incomplete; missing llm\.layers\.1\.attention\.wq"):
        _trainer(cfg)
    with pytest.raises(CheckpointError, match=r"the llm part is incomplete"):
        load_any(broken)


def test_a_config_that_differs_from_the_checkpoint_is_warned_about(formats, tmp_path, caplog):
    cfg = tiny_config(tmp_path, "--training.init_from", str(formats["hf"]), "--model.rope_theta", "500000")
    with caplog.at_level(logging.WARNING, logger="mmtune.training.weights"):
        trainer = _trainer(cfg)
    shutdown({"trainer": trainer})
    assert "differs from the config in model.rope_theta (config 500000.0, checkpoint 10000.0)" in caplog.text


def test_a_resumed_run_reads_its_checkpoint_not_init_from(formats, tmp_path):
    import shutil

    from mmtune.cli import main

    regen = _regen_module()
    world = regen.write_data(tmp_path / "world")
    start = shutil.copytree(formats["hf"], tmp_path / "start")
    config = str(ROOT / "configs" / "debug-stage2.yaml")
    args = [*regen.overrides(2, world, tmp_path / "run"), "--training.init_from", str(start),
            "--training.max_steps", "2", "--training.save_every", "1"]
    assert main(["train", config, *args]) == 0
    uninterrupted = regen.losses(tmp_path / "run")
    shutil.rmtree(start)  # gone: a resume must not need it
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_00000002")
    (tmp_path / "run" / "metrics.jsonl").unlink()
    assert main(["train", config, *args, "--resume", "auto"]) == 0
    assert regen.losses(tmp_path / "run") == uninterrupted[1:]
