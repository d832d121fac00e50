"""``mmtune train CONFIG --dry-run`` starts every shipped preset at its real size on the meta device.

Each preset runs in a temporary working directory holding stand-ins for what it names: the tokenizer
(the LLaMA SentencePiece asset, or a word-level one for the quickstart's 128-word vocabulary), the tower's
``config.json`` written by transformers at the preset's size, and small data files in each source's format
(img2dataset shards with their ``_stats.json``, Alpaca and LLaVA JSON with an image folder). No weight file
exists anywhere, image decoding and shard reading are made to fail, and the printed parameter and step
counts are checked against the released model sizes and the stand-in data.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from braceexpand import braceexpand

from data_factory import alpaca_items, llava_items, write_images, write_json, write_shard, write_shard_stats
from mmtune.cli import main
from mmtune.config import Config, load_config
from mmtune.planning import decoder_parameters, tower_size

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
ENTRIES = 300  # per JSON source
PER_SHARD = 2  # samples per stand-in shard (and its stats file's successes)
RELEASED = {  # llm, vision parameters of the released checkpoints
    "accessory-qformer-13b-stage1.yaml": (13_015_864_320, 1_091_114_496),
    "accessory-qformer-13b-stage2.yaml": (13_015_864_320, 1_091_114_496),
    "llava15-7b-stage1.yaml": (6_738_415_616, 303_507_456),
    "llava15-7b-stage2.yaml": (6_738_415_616, 303_507_456),
    "llava15-7b-hf-finetune.yaml": (6_738_415_616 + 2 * 64 * 4096, 303_507_456),  # llava-hf's 32064 rows
}
BENCH = {"bench-cpu.yaml", "bench-gpu.yaml"}  # `mmtune bench` presets: no tokenizer or data of their own


def _tokenizer(cfg: Config) -> None:
    from mmtune.data.synth.writers import template_texts, write_tokenizer

    path = Path(cfg.tokenizer.path)
    if cfg.model.vocab_size < 32000:  # the quickstart's word-level vocabulary
        write_tokenizer(path, [*template_texts(), "a red square caption"])
        return
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "tests/assets/llama-tokenizer/tokenizer.model", path / "tokenizer.model")


def _tower_config(cfg: Config) -> None:
    """The transformers ``config.json`` of ``vision.path`` at the preset's sizes (no weights)."""
    from transformers import Blip2Config, CLIPVisionConfig, SiglipVisionConfig

    hf = cfg.vision.hf_config
    if cfg.vision.kind == "blip2":
        config = Blip2Config(vision_config=hf["vision_config"], qformer_config=hf["qformer_config"],
                             num_query_tokens=hf["num_query_tokens"])
    else:
        config = {"clip": CLIPVisionConfig, "siglip": SiglipVisionConfig}[cfg.vision.kind](**hf)
    config.save_pretrained(cfg.vision.path)


def _sources(cfg: Config) -> int:
    """Writes every source of ``cfg.data``; returns the samples of one epoch."""
    samples = 0
    for source in cfg.data.sources:
        root = source.image_root or cfg.data.image_root
        if source.kind == "webdataset":
            first, *rest = [Path(url) for url in braceexpand(source.path)]
            write_shard(first, 0, PER_SHARD)
            for shard in (first, *rest):
                if shard != first:
                    shutil.copy(first, shard)  # never read: the same bytes will do
                write_shard_stats(shard, PER_SHARD)
                samples += PER_SHARD
            continue
        assert source.kind in ("llava", "alpaca"), f"no stand-in for a {source.kind} source"
        images = write_images(Path(root), 3) if root else None
        write_json(Path(source.path), llava_items(ENTRIES, images) if source.kind == "llava" else alpaca_items(ENTRIES))
        samples += ENTRIES
    return samples


def standins(cfg: Config) -> int:
    """Writes the stand-ins of ``cfg`` under the working directory; returns the samples of one epoch."""
    _tokenizer(cfg)
    if cfg.vision.path:
        _tower_config(cfg)
    return _sources(cfg)


def _bench_overrides(tmp: Path) -> list[str]:
    write_json(tmp / "bench/alpaca.json", alpaca_items(ENTRIES))
    (tmp / "bench/mix.yaml").write_text(json.dumps({"sources": [{"path": "alpaca.json", "kind": "alpaca"}]}))
    shutil.copytree(ROOT / "tests/assets/llama-tokenizer", tmp / "bench/tok")
    return ["--tokenizer.path", "bench/tok", "--data.mixture", "bench/mix.yaml"]


@pytest.fixture
def no_bytes_read(monkeypatch):
    """Decoding an image or reading a shard fails the test."""
    import PIL.Image

    import mmtune.data.sources as sources

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run read image or shard bytes")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    monkeypatch.setattr(sources, "read_shard", refuse)


def dry_run(preset: str, capsys, *options: str) -> tuple[int, str, str]:
    code = main(["train", str(ROOT / "configs" / preset), "--dry-run", *options])
    out = capsys.readouterr()
    return code, out.out, out.err


def _printed(out: str) -> dict[str, int]:
    found = {name: int(n.replace(",", "")) for name, n in re.findall(r"^  (llm|vision|connector) +([\d,]+)", out, re.M)}
    found["steps"] = int(re.search(r"^steps: ([\d,]+)", out, re.M).group(1).replace(",", ""))
    rows = re.search(r"x ([\d,]+) rows /", out)
    found["rows"] = int(rows.group(1).replace(",", "")) if rows else -1
    return found


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_dry_runs_at_its_real_size(preset, tmp_path, monkeypatch, capsys, no_bytes_read):
    monkeypatch.chdir(tmp_path)
    options = _bench_overrides(tmp_path) if preset in BENCH else []
    cfg = load_config(ROOT / "configs" / preset, options)
    samples = standins(cfg)
    nproc = "8" if preset in RELEASED else "1"  # GPU-node presets on 8 GPUs, the rest on one device
    code, out, err = dry_run(preset, capsys, "--nproc", nproc, *options)
    assert code == 0, err
    printed = _printed(out)
    llm, vision = RELEASED.get(preset, (decoder_parameters(cfg.model)[0], tower_size(cfg.vision)[0]))
    assert (printed["llm"], printed["vision"]) == (llm, vision)
    t = cfg.training
    if t.max_steps is not None:
        assert printed["steps"] == t.max_steps
    else:
        if cfg.data.batching != "packed":
            assert printed["rows"] == samples  # one row per sample
        assert printed["steps"] == math.ceil(t.epochs * printed["rows"] / t.global_batch_size)
    assert not torch.cuda.is_initialized() and not torch.distributed.is_initialized()
    assert not Path(t.output_dir).exists()


def test_accessory_13b_stage1_in_full(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    preset = "accessory-qformer-13b-stage1.yaml"
    standins(load_config(ROOT / "configs" / preset))
    monkeypatch.setenv("WORLD_SIZE", "8")  # as torchrun sets it
    code, out, _ = dry_run(preset, capsys)
    assert code == 0
    assert "parameters: 14,110,936,576 total, 13,019,822,080 trainable" in out  # 13.0B llm + 1.1B tower + connector
    assert "  connector         3,957,760  trainable 3,957,760" in out
    assert "parallel: 8 processes = 8 data-parallel x 1 tensor-parallel" in out
    assert "batch: global 256 rows = micro 8 x 8 data-parallel x 4 accumulation" in out
    assert "steps: 8 = ceil(epochs 1 x 2,000 rows / 256)" in out  # 1000 shards x 2 img2dataset successes
    assert "weights not read: training.init_from models/llama2-13b, vision.path models/blip2-opt-2.7b" in out
    main(["plan", "--model", "llama2-13b", "--gpus", "8", "--seq", "512", "--micro-batch", "8", "--tp", "1",
          "--checkpointing", "--json"])
    asked = json.loads(capsys.readouterr().out)["asked"]
    assert f"activation checkpointing): {asked['total']:.1f} GiB" in out  # what `mmtune plan` predicts


@pytest.mark.parametrize("options, field", [
    (["--nproc", "16"], "training.global_batch_size"),  # 32 rows < micro 4 x 16 ranks
    (["--nproc", "8", "--parallel.tp", "3"], "parallel.tp"),
    (["--nproc", "6", "--parallel.tp", "3"], "model.n_heads"),
    (["--nproc", "0"], "--nproc"),
    (["--nproc", "8", "--training.epochs", "1", "--vision.path", "models/nowhere"], "vision.path"),
])
def test_errors_are_one_line_naming_the_field(options, field, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    preset = "accessory-qformer-13b-stage2.yaml"
    standins(load_config(ROOT / "configs" / preset))
    code, out, err = dry_run(preset, capsys, *options)
    assert code == 2 and field in err and err.count("\n") == 1, err


def test_uncounted_shards_and_missing_tokenizer_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    preset = "accessory-qformer-13b-stage1.yaml"
    standins(load_config(ROOT / "configs" / preset))
    Path("data/captions/00007_stats.json").unlink()
    code, _, err = dry_run(preset, capsys)
    assert code == 2 and "data.sources[0].num_samples" in err and "00007_stats.json" in err
    code, out, _ = dry_run(preset, capsys, "--data.sources", "[{path: 'data/captions/{00000..00999}.tar', "
                           "kind: webdataset, num_samples: 12800}]")
    assert code == 0 and "steps: 50 = ceil(epochs 1 x 12,800 rows / 256)" in out
    code, _, err = dry_run("bench-cpu.yaml", capsys)
    assert code == 2 and "tokenizer.path" in err and err.count("\n") == 1
