"""Config: presets, inheritance, overrides, documentation, and one-line errors for bad values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mmtune import config as C
from mmtune.config_values import hints
from mmtune.errors import ConfigError

CONFIGS = Path(__file__).parents[1] / "configs"


def test_defaults_check():
    cfg = C.load_config()
    assert cfg.model.dim == 64 and cfg.training.lr == 3e-5


def test_preset_fills_fields_and_explicit_fields_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {preset: llama2-13b, max_seq_len: 512}\nvision: {preset: blip2-vitg-qformer}\n")
    cfg = C.load_config(path)
    assert (cfg.model.dim, cfg.model.n_layers, cfg.model.n_heads) == (5120, 40, 40)
    assert cfg.model.max_seq_len == 512
    assert cfg.vision.kind == "blip2" and cfg.vision.hf_config["num_query_tokens"] == 32


def test_overrides_are_typed_and_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training: {lr: 1.0e-3, max_steps: 5}\n")
    cfg = C.load_config(path, ["--training.lr", "1e-4", "--training.max_steps=7",
                               "--parallel.activation_checkpointing", "true",
                               "--training.betas", "[0.9, 0.99]", "--training.init_from", "null"])
    assert cfg.training.lr == 1e-4 and isinstance(cfg.training.lr, float)
    assert cfg.training.max_steps == 7
    assert cfg.parallel.activation_checkpointing is True
    assert cfg.training.betas == [0.9, 0.99]
    assert cfg.training.init_from is None


def test_override_inside_hf_config_changes_one_key_with_a_yaml_value():
    cfg = C.load_config(CONFIGS / "quickstart-qformer-stage1.yaml",
                        ["--vision.hf_config.qformer_config.initializer_range", "0.1",
                         "--vision.hf_config.num_query_tokens=8"])
    hf = cfg.vision.hf_config
    assert hf["qformer_config"]["initializer_range"] == 0.1
    assert hf["num_query_tokens"] == 8
    # the rest of the file's hf_config is still there, not replaced by the two keys
    assert hf["qformer_config"]["num_hidden_layers"] == 2
    assert hf["vision_config"]["initializer_range"] == 0.02


def test_inherit_merges_sections(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {preset: debug}\ntraining: {lr: 1.0e-3, epochs: 2}\n")
    (tmp_path / "child.yaml").write_text("inherit: base.yaml\ntraining: {lr: 5.0e-4}\n")
    cfg = C.load_config(tmp_path / "child.yaml")
    assert cfg.training.lr == 5e-4 and cfg.training.epochs == 2 and cfg.model.n_kv_heads == 2


def test_inherit_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("inherit: b.yaml\n")
    (tmp_path / "b.yaml").write_text("inherit: a.yaml\n")
    with pytest.raises(ConfigError, match="inherit"):
        C.load_config(tmp_path / "a.yaml")


def test_save_and_reload_round_trip(tmp_path):
    cfg = C.load_config(None, ["--model.preset", "llama3.1-8b", "--vision.preset", "siglip-so400m"])
    C.save_config(cfg, tmp_path / "resolved.yaml")
    again = C.load_config(tmp_path / "resolved.yaml")
    assert again == cfg


@pytest.mark.parametrize("yaml_file", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_preset_loads(yaml_file):
    cfg = C.load_config(yaml_file)
    assert isinstance(cfg, C.Config)


def _all_dataclasses(cls=C.Config, seen=None):
    seen = seen if seen is not None else []
    if cls in seen:
        return seen
    seen.append(cls)
    for tp in hints(cls).values():
        args = [tp, *getattr(tp, "__args__", ())]
        for arg in args:
            if dataclasses.is_dataclass(arg):
                _all_dataclasses(arg, seen)
    return seen


@pytest.mark.parametrize("cls", _all_dataclasses(), ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(cls):
    docs = C.field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
    assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


BAD = [
    (["--training.lr", "abc"], "training.lr", "a number"),
    (["--training.lr", "-1"], "training.lr", "positive"),
    (["--training.min_lr", "1"], "training.min_lr", "[0, lr="),
    (["--training.max_steps", "2.5"], "training.max_steps", "integer"),
    (["--training.max_steps", "0"], "training.max_steps", "positive"),
    (["--training.epochs", "0"], "training.epochs", "positive"),
    (["--training.global_batch_size", "7", "--training.micro_batch_size", "2"], "training.global_batch_size",
     "multiple of micro_batch_size"),
    (["--training.micro_batch_size", "0"], "training.micro_batch_size", "positive"),
    (["--training.warmup_fraction", "1.5"], "training.warmup_fraction", "[0, 1)"),
    (["--training.betas", "[0.9]"], "training.betas", "two numbers"),
    (["--training.betas", "not-a-list"], "training.betas", "a list"),
    (["--training.betas", "[0.9, 0.95"], "training.betas", "a list"),
    (["--vision.hf_config", "{a: [1"], "vision.hf_config", "a mapping"),
    (["--training.dtype", "fp8"], "training.dtype", "one of auto, fp32, bf16"),
    (["--training.clip_grad", "-1"], "training.clip_grad", "0 or more"),
    (["--training.keep_last", "0"], "training.keep_last", "positive"),
    (["--training.nope", "1"], "training.nope", "a known field"),
    (["--model.preset", "llama9-1t"], "model.preset", "one of debug"),
    (["--model.dim", "63"], "model.n_heads", "divisor of dim"),
    (["--model.n_kv_heads", "3"], "model.n_kv_heads", "divisor of n_heads"),
    (["--model.n_layers", "0"], "model.n_layers", "positive"),
    (["--model.qkv_bias", "maybe"], "model.qkv_bias", "true or false"),
    (["--model.rope_scaling", "5"], "model.rope_scaling", "RopeScaling"),
    (["--vision.kind", "resnet"], "vision.kind", "one of none, clip, siglip, blip2"),
    (["--vision.preset", "vit-huge"], "vision.preset", "one of"),
    (["--vision.image_mean", "[0.5, 0.5]"], "vision.image_mean", "three numbers"),
    (["--vision.resize", "squash"], "vision.resize", "center_crop"),
    (["--connector.kind", "perceiver"], "connector.kind", "one of mlp, qformer"),
    (["--trainable.llm", "lora"], "trainable.llm", "frozen, full"),
    (["--trainable.vision", "full"], "trainable.vision", "vision.kind is none"),
    (["--data.batching", "dynamic"], "data.batching", "packed, grouped, padded"),
    (["--data.max_seq_len", "-5"], "data.max_seq_len", "positive"),
    (["--data.max_bad_fraction", "2"], "data.max_bad_fraction", "[0, 1]"),
    (["--data.num_workers", "-1"], "data.num_workers", "0 or more"),
    (["--data.overflow", "wrap"], "data.overflow", "truncate, skip"),
    (["--parallel.tp", "0"], "parallel.tp", "positive"),
    (["--parallel.cpu_threads", "-2"], "parallel.cpu_threads", "0 (automatic) or more"),
    (["--connector.merge", "0"], "connector.merge", "positive"),
    (["--connector.kind", "qformer", "--connector.merge", "2"], "connector.merge", "1 for the qformer"),
    (["--training.lr"], "training.lr", "a value after the option"),
    (["training.lr", "1"], "override", "--section.field VALUE"),
    (["--training", "1"], "override", "--section.field VALUE"),
]


@pytest.mark.parametrize("overrides,field,allowed", BAD, ids=lambda v: v if isinstance(v, str) else None)
def test_bad_values_name_field_value_and_allowed(overrides, field, allowed):
    with pytest.raises(ConfigError) as info:
        C.load_config(None, overrides)
    message = str(info.value)
    assert f"'{field}'" in message and allowed in message
    assert "\n" not in message


def test_bad_yaml_files(tmp_path):
    cases = {
        "missing.yaml": None,
        "broken.yaml": "model: {dim: [1, 2\n",
        "list.yaml": "- 1\n- 2\n",
        "scalar_section.yaml": "training: 5\n",
        "sources.yaml": "data: {sources: [{path: ''}]}\n",
        "weight.yaml": "data: {sources: [{path: a.json, weight: 0}]}\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError):
            C.load_config(path)


def test_describe_lists_every_leaf_with_docs():
    rows = C.describe()
    names = [name for name, _, _ in rows]
    assert "training.lr" in names and "model.rope_scaling" in names and "data.sources" in names
    assert all(doc for _, _, doc in rows)
