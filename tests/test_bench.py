"""Benchmarks: they run end to end on tiny models, and the baselines compute the same thing."""

from __future__ import annotations

import json

import torch

from mmtune import cli
from mmtune.bench.generate import hf_causal_lm
from mmtune.config import ConnectorConfig, ModelConfig, VisionConfig
from mmtune.models.generate import SamplingParams, generate
from mmtune.models.io import save_model
from mmtune.models.vlm import VisionLanguageModel

TINY = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, max_seq_len=128)


def _text_model() -> VisionLanguageModel:
    model = VisionLanguageModel(TINY, VisionConfig(kind="none"), ConnectorConfig(), image_token_id=256)
    model.init_weights()
    return model.eval()


def test_transformers_baseline_generates_the_same_greedy_tokens():
    model = _text_model()
    prompts = [[5, 9, 17, 33, 2, 100, 7, 8]]
    ours = generate(model, prompts, params=SamplingParams(max_new_tokens=12))[0]
    hf = hf_causal_lm(model.llm)
    out = hf.generate(input_ids=torch.tensor(prompts), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                      pad_token_id=0)
    assert out[0, len(prompts[0]):].tolist() == ours


def test_bench_generate_command_reports_both_sides(tmp_path, capsys):
    save_model(_text_model(), tmp_path / "m")
    code = cli.main(["bench", "generate", "--model", str(tmp_path / "m"), "--prompt-len", "8",
                     "--new-tokens", "4", "--repeats", "1", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["mmtune", "transformers"]
    assert all(r["prefill_tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 for r in rows)


def test_bench_generate_rejects_a_too_long_request(tmp_path, capsys):
    save_model(_text_model(), tmp_path / "m")
    code = cli.main(["bench", "generate", "--model", str(tmp_path / "m"), "--prompt-len", "120",
                     "--new-tokens", "64", "--repeats", "1"])
    assert code == 2
    assert "max_seq_len" in capsys.readouterr().err
