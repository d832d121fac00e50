"""``mmtune bench train``: the synthetic mixture, the step plan, and three sides that compute the same loss."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from mmtune import cli
from mmtune.bench.synthetic import MixtureSpec, synthetic_mixture
from mmtune.bench.train import hf_inputs, plan_steps, run_train_bench
from mmtune.config import load_config
from mmtune.data.batch import Batch

TINY_YAML = """
model: {dim: 64, n_layers: 2, n_heads: 4, n_kv_heads: 2, vocab_size: 512, max_seq_len: 256}
vision: {preset: debug-clip}
connector: {kind: mlp}
data: {max_seq_len: 96, num_workers: 0}
training: {micro_batch_size: 2, dtype: fp32, lr: 1.0e-3}
"""


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


def _spec(**kw) -> MixtureSpec:
    values = dict(vocab_size=1000, image_token_id=999, num_image_tokens=144, max_seq_len=512, scale=0.25)
    values.update(kw)
    return MixtureSpec(**values)


def test_mixture_has_the_scaled_length_spread_and_supervision():
    samples = synthetic_mixture(_spec(), 400, [b"jpeg"], seed=0)
    llava = [s for s in samples if s.images]
    alpaca = [s for s in samples if not s.images]
    assert 0.6 < len(llava) / len(samples) < 0.8
    text = [len(s) - 144 - 2 for s in llava]
    assert 15 < statistics.mean(text) < 35  # (max(24, N(54, 140))) / 4 is about 25 tokens of text
    assert all(25 <= len(s) <= 152 for s in alpaca)  # [100, 600] / 4 plus BOS and EOS
    assert 60 < statistics.mean(len(s) for s in alpaca) < 90
    for s in samples:
        ids = s.input_ids.tolist()
        assert ids[0] == 1 and ids[-1] == 2 and not s.loss_mask[0] and s.loss_mask[-1]
        assert ids.count(999) == (144 if s.images else 0)
        if s.images:
            assert s.image_spans == ((1, 145),) and ids[1:145] == [999] * 144
            assert not s.loss_mask[1:145].any()
        assert 0 < s.num_supervised < len(s)


def test_mixture_refuses_rows_too_short_for_an_image():
    with pytest.raises(ValueError, match="no room"):
        synthetic_mixture(_spec(max_seq_len=150), 4, [b"x"])


def test_padded_plan_holds_the_samples_of_each_packed_step():
    samples = synthetic_mixture(_spec(num_image_tokens=16, max_seq_len=96), 80, [b"x"], seed=1)
    plan = plan_steps(samples, 96, rows_per_step=2, n_steps=3)
    assert [len(step) for step in plan.packed] == [2, 2, 2]
    for packed, padded in zip(plan.packed, plan.padded):
        assert all(len(row) == 96 for row in packed)
        assert sum(r.num_samples for r in packed) == len(padded)
        assert sum(r.num_tokens for r in packed) == sum(r.num_tokens for r in padded)
        assert sum(r.num_supervised for r in packed) == sum(r.num_supervised for r in padded)
        assert sum(len(r.images) for r in packed) == sum(len(r.images) for r in padded)
    with pytest.raises(ValueError, match="rows"):
        plan_steps(samples[:3], 96, rows_per_step=2, n_steps=3)


def test_hf_inputs_unshift_the_labels_and_mask_padding():
    batch = Batch.from_tensors(torch.tensor([[1, 5, 6, 2, 0]]), torch.tensor([[-100, 6, 2, -100, -100]]),
                               torch.tensor([[0, 1, 2, 3, 0]]), torch.tensor([[0, 0, 0, 0, -1]]))
    out = hf_inputs(batch)
    assert out["labels"].tolist() == [[-100, -100, 6, 2, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 0]]
    assert "pixel_values" not in out


def test_three_sides_train_the_same_samples_to_the_same_loss(tiny_config):
    cfg = load_config(tiny_config, [])
    results = run_train_bench(cfg, steps=2, warmup=0)
    assert [r.name for r in results] == ["mmtune packed", "mmtune padded", "transformers Llava, padded"]
    first = [r.losses[0] for r in results]
    assert first[0] == pytest.approx(first[2], rel=1e-5) and first[1] == pytest.approx(first[2], rel=1e-5)
    second = [r.losses[1] for r in results]  # after one identical AdamW step
    assert second[0] == pytest.approx(second[2], rel=1e-4) and second[1] == pytest.approx(second[2], rel=1e-4)
    packed, padded, hf = results
    assert packed.padding_fraction < padded.padding_fraction == pytest.approx(hf.padding_fraction)
    for r in results:
        assert r.tokens_per_s > r.supervised_tokens_per_s > 0 and r.samples_per_s > 0
        assert 0 <= r.data_wait_fraction < 1 and r.peak_memory_gb > 0 and r.mfu is None


def test_text_only_model_runs_against_llama_for_causal_lm(tmp_path):
    path = tmp_path / "text.yaml"
    path.write_text(TINY_YAML.replace("vision: {preset: debug-clip}", "vision: {kind: none}"))
    cfg = load_config(path, [])
    results = run_train_bench(cfg, steps=1, warmup=0, sides=["packed", "transformers"])
    assert [r.name for r in results] == ["mmtune packed", "transformers Llama, padded"]
    assert results[0].losses[0] == pytest.approx(results[1].losses[0], rel=1e-5)


def test_bench_train_command_prints_json_and_refuses_unknown_sides(tiny_config, capsys):
    code = cli.main(["bench", "train", "--config", str(tiny_config), "--steps", "1", "--warmup", "0",
                     "--sides", "packed", "--json", "--data.max_seq_len", "64"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["mmtune packed"] and len(rows[0]["losses"]) == 1
    code = cli.main(["bench", "train", "--config", str(tiny_config), "--sides", "packed,deepspeed"])
    assert code == 2
    assert "deepspeed" in capsys.readouterr().err


def test_saved_bytes_count_each_activation_storage_once():
    from mmtune.bench.train import SavedBytes

    saved = SavedBytes()
    x = torch.ones(256, 256, requires_grad=True)  # 256 KiB of float32
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        (x * x).sum().backward()  # saves x twice: one storage
    assert saved.gb * 2**30 == 256 * 256 * 4
