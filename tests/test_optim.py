"""Optimizer groups, the warm-up + cosine schedule, global-norm clipping, and the exact loss under
accumulation and padding."""

from __future__ import annotations

import math

import pytest
import torch

from mmtune.config import ModelConfig, TrainingConfig, load_config
from mmtune.data.batch import Batch
from mmtune.errors import ConfigError
from mmtune.models.llama import Transformer
from mmtune.models.vlm import build_model
from mmtune.training.loss import step_counts, token_loss_sum
from mmtune.training.optim import build_optimizer, build_scheduler, clip_grad_norm, lr_at, param_groups
from mmtune.training.trainer import accumulation_steps
from test_train_support import ROOT


def _names(model, params):
    ids = {id(p) for p in params}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_weight_decay_skips_norms_biases_and_boundary_embeddings():
    cfg = load_config(ROOT / "configs/debug-stage2.yaml", ["--tokenizer.path", "x"])
    model = build_model(cfg, 32000, device="meta")
    decay, no_decay = param_groups(model, 0.02)
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    decayed, plain = _names(model, decay["params"]), _names(model, no_decay["params"])
    assert "connector.proj.0.weight" in decayed and "llm.layers.0.attention.wq.weight" in decayed
    assert "llm.tok_embeddings.weight" in decayed
    assert {"connector.start_img", "connector.end_img", "connector.proj.0.bias", "connector.proj.1.weight",
            "llm.norm.weight", "llm.layers.1.ffn_norm.weight"} <= set(plain)
    assert all(n.endswith(("norm.weight", "bias", "_img", "proj.1.weight")) for n in plain), plain
    assert not any(n.startswith("vision.") for n in decayed + plain), "the frozen tower is left out"


def test_schedule_warms_up_then_follows_the_cosine():
    assert [lr_at(s, 10, 4, 1.0, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 10, 4, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(7, 10, 4, 1.0, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(10, 10, 4, 1.0, 0.1) == pytest.approx(0.1)
    model = torch.nn.Linear(2, 2)
    tcfg = TrainingConfig(lr=2e-3, min_lr=2e-4, warmup_fraction=0.2)
    opt = build_optimizer(model, tcfg, torch.device("cpu"))
    sched = build_scheduler(opt, tcfg, total_steps=10)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, 10, 2, 2e-3, 2e-4) for s in range(10)])


def test_clip_matches_torch_and_leaves_nonfinite_gradients_alone():
    params = [torch.nn.Parameter(torch.randn(5)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn(5) * 3
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for p, q in zip(params, twin):
        q.grad = p.grad.clone()
    expected = torch.nn.utils.clip_grad_norm_(twin, 1.0)
    assert clip_grad_norm(params, 1.0) == pytest.approx(float(expected), rel=1e-6)
    assert all(torch.allclose(p.grad, q.grad, atol=1e-6) for p, q in zip(params, twin))
    params[0].grad[0] = float("inf")
    before = [p.grad.clone() for p in params]
    assert not math.isfinite(clip_grad_norm(params, 1.0))
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))


def _batch(ids: torch.Tensor, n_real: list[int]) -> Batch:
    """Rows of ``ids`` right-padded after ``n_real`` tokens, supervising the second half of each."""
    b, t = ids.shape
    labels = torch.full((b, t), -100)
    sample_ids = torch.full((b, t), -1)
    for r, n in enumerate(n_real):
        labels[r, n // 2:n - 1] = ids[r, n // 2 + 1:n]
        sample_ids[r, :n] = 0
    return Batch.from_tensors(ids, labels, torch.arange(t).expand(b, t), sample_ids)


def test_loss_is_exact_under_accumulation_and_padding():
    model = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=4, vocab_size=64, multiple_of=16, max_seq_len=32))
    ids = torch.randint(0, 64, (4, 12))
    lengths = [12, 5, 9, 3]
    full = _batch(ids, lengths)
    logits = model(full.input_ids, **full.model_inputs())
    reference = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), full.labels.reshape(-1))
    reference.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    micro = [_batch(ids[i:i + 1, :lengths[i]], [lengths[i]]) for i in range(4)]  # unpadded, one row each
    count = step_counts(micro)["supervised"]
    assert count == int((full.labels != -100).sum()) == full.num_supervised and step_counts(micro)["samples"] == 4
    total = 0.0
    for b in micro:
        loss = token_loss_sum(model(b.input_ids, **b.model_inputs()), b.labels)
        (loss / count).backward()
        total += float(loss.detach())
    assert total / count == pytest.approx(float(reference.detach()), rel=1e-6)
    assert all(torch.allclose(p.grad, w, atol=1e-6) for p, w in zip(model.parameters(), want))


def test_global_batch_must_split_over_micro_batches_and_ranks():
    assert accumulation_steps(32, 4, 8) == 1 and accumulation_steps(32, 2, 2) == 8
    with pytest.raises(ConfigError, match="multiple of micro_batch_size x data-parallel ranks = 12"):
        accumulation_steps(32, 4, 3)
