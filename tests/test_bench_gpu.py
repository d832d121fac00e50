"""``mmtune bench gpu``: the report pipeline at toy size on CPU, the plan's model choice, and the one-line
failure without a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from mmtune import cli
from mmtune.bench import gpu


def test_tiny_run_writes_every_field_of_the_json_and_markdown_report(tmp_path, capsys):
    assert cli.main(["bench", "gpu", "--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu-report.json").read_text())
    md = (tmp_path / "gpu-report.md").read_text()
    assert capsys.readouterr().out == md and report["tiny"] and report["device"] == "CPU (--tiny)"
    assert report["errors"] == [] and "Failed parts" not in md
    assert report["targets"] == {"mfu_decoder": 0.45, "peak_vs_plan": 0.10, "varlen_speedup_vs_loop": 3.0}
    train = report["train"]
    assert train["layers_for_80gb_card"] == 20  # of LLaVA-1.5-7B's 32, full AdamW state on 80 GB by the plan
    eager, compiled = train["rows"]
    for key in ("tokens_per_s", "images_per_s", "step_time_s", "peak_memory_gb", "planned_gb", "peak_vs_plan"):
        assert eager[key] > 0 or key == "peak_vs_plan", key
    assert eager["compile"] is False and eager["mfu_decoder"] is None and eager["mfu_with_tower"] is None  # no GPU peak
    assert compiled["compile"] is True and compiled["status"].startswith("skipped")
    paths = {row["path"]: row for row in report["attention"]["paths"]}
    assert paths["varlen"] == {"path": "varlen", "status": "skipped: needs CUDA"}
    assert paths["flex"] == {"path": "flex", "status": "skipped: needs CUDA"}
    assert paths["loop"]["max_abs_diff_vs_loop"] == 0 and paths["masked"]["max_abs_diff_vs_loop"] < 1e-5
    assert paths["masked"]["ms"] > 0 and report["attention"]["samples_per_row"] >= 8
    assert [row["name"] for row in report["decode"]["rows"]] == ["mmtune", "transformers"]
    assert all(row["decode_tokens_per_s"] > 0 for row in report["decode"]["rows"])
    for heading in ("# mmtune bench gpu: CPU (--tiny)", "## Stage-2 step", "## Packed attention", "## Decoding",
                    "| varlen | - | - | - | skipped: needs CUDA |"):
        assert heading in md


def test_without_a_gpu_the_check_fails_with_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["bench", "gpu", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs a CUDA GPU" in err and not (tmp_path / "r").exists()


def test_the_plan_picks_the_most_layers_that_fit_and_all_of_them_on_a_141_gb_card():
    assert gpu.largest_fitting_layers(gpu.FULL, 141.0)[0] == 32
    layers, planned = gpu.largest_fitting_layers(gpu.FULL, 80.0)
    assert layers == 20 and planned <= 80.0
    with pytest.raises(ValueError, match="no LLaVA-shaped model fits 10 GiB"):
        gpu.largest_fitting_layers(gpu.FULL, 10.0)


def test_flops_split_counts_the_decoder_and_the_frozen_tower_apart():
    cfg = gpu.stage2_config(gpu.FULL, 32, False)
    decoder, per_image = gpu.flops_split(cfg)
    assert 6.4e9 * 6 < decoder < 6.8e9 * 6 + 12 * 32 * 4096 * 2048  # ~6.6B non-embedding decoder parameters
    assert 2 * 0.29e9 * 576 < per_image < 2 * 0.32e9 * 577 + 6 * 0.03e9 * 577  # CLIP-L/336 forward per image


def test_the_gpu_sizes_are_the_documented_ones():
    import random

    from mmtune.bench.attention import packed_sample_ids

    shape, bench = gpu.FULL["small_model"], gpu.FULL["attention"]
    assert (shape["dim"] // shape["n_heads"], shape["n_heads"], shape["n_kv_heads"]) == (64, 32, 4)
    assert (bench["rows"], bench["length"]) == (4, 2048)
    ids = packed_sample_ids(bench["rows"], bench["length"], bench["sample_len"], random.Random(0))
    assert 8 <= float((ids.max(dim=1).values + 1).float().mean()) <= 12  # 8+ samples per row, about 10
    assert gpu.FULL["decode"] == dict(batch=8, prompt_len=128, new_tokens=64, repeats=3)
    cfg = gpu.stage2_config(gpu.FULL, None, True)
    assert (cfg.model.dim, cfg.model.n_layers, cfg.data.max_seq_len, cfg.training.micro_batch_size) == (4096, 32, 2048, 1)
    assert cfg.parallel.activation_checkpointing and cfg.parallel.compile and cfg.training.dtype == "auto"
    assert (cfg.trainable.vision, cfg.trainable.connector, cfg.trainable.llm) == ("frozen", "full", "full")


def test_a_failing_part_is_recorded_the_rest_reported_and_the_command_exits_1(tmp_path, capsys, monkeypatch):
    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(gpu, "train_row", out_of_memory)
    assert cli.main(["bench", "gpu", "--tiny", "--out", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "gpu-report.json").read_text())
    status = "error: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert report["train"]["rows"][0] == {"compile": False, "status": status} and report["errors"] == [status]
    assert report["attention"]["paths"][1]["ms"] > 0 and report["decode"]["rows"][0]["decode_tokens_per_s"] > 0
    assert "Failed parts: 1" in capsys.readouterr().out


def test_a_failing_attention_path_is_recorded_and_the_others_timed(monkeypatch):
    real = gpu.attention_paths

    def with_a_broken_masked_path(ids):
        paths = real(ids)
        paths["masked"] = lambda q, k, v: (_ for _ in ()).throw(RuntimeError("no kernel image for this card"))
        return paths

    monkeypatch.setattr(gpu, "attention_paths", with_a_broken_masked_path)
    rows = {row["path"]: row for row in gpu.attention_section(gpu.TINY, torch.device("cpu"))["paths"]}
    assert rows["masked"] == {"path": "masked", "status": "error: RuntimeError: no kernel image for this card"}
    assert rows["loop"]["ms"] > 0 and rows["varlen"]["status"] == "skipped: needs CUDA"
