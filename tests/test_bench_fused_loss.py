"""The supervised-only fused loss equals the plain full-logits cross-entropy sum, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmtune.training.fused_loss import supervised_loss_sum, supervised_rows


def _plain_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = hidden @ weight.T
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")


def _case(seed: int = 0, b: int = 3, t: int = 17, d: int = 32, v: int = 301) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, d, generator=gen)
    weight = torch.randn(v, d, generator=gen) * 0.2
    labels = torch.randint(0, v, (b, t), generator=gen)
    labels[torch.rand(b, t, generator=gen) < 0.6] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_fused_sum_equals_the_plain_sum_with_a_weight(chunk):
    hidden, weight, labels = _case()
    plain = _plain_sum(hidden, weight, labels)
    fused = supervised_loss_sum(hidden, weight, labels, chunk_size=chunk)
    assert fused.dtype == torch.float32
    assert abs(float(fused) - float(plain)) <= 1e-5 * max(1.0, abs(float(plain)))


def test_fused_gradients_equal_the_plain_gradients_through_the_output_module():
    hidden, weight, labels = _case(seed=1)
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(weight)
    h1 = hidden.clone().requires_grad_()
    _plain_sum(h1, head.weight, labels).backward()
    plain_h, plain_w = h1.grad.clone(), head.weight.grad.clone()
    head.weight.grad = None
    h2 = hidden.clone().requires_grad_()
    supervised_loss_sum(h2, head, labels, chunk_size=7).backward()
    torch.testing.assert_close(h2.grad, plain_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, plain_w, rtol=1e-5, atol=1e-6)
    assert (h2.grad[labels == -100] == 0).all()


def test_nothing_supervised_gives_zero_and_a_zero_head_gradient():
    hidden, weight, labels = _case(seed=2)
    labels.fill_(-100)
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    loss = supervised_loss_sum(hidden.requires_grad_(), head, labels)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert head.weight.grad is not None and not head.weight.grad.any()


def test_bf16_head_matches_the_plain_bf16_path():
    hidden, weight, labels = _case(seed=3)
    hidden, weight = hidden.bfloat16(), weight.bfloat16()
    plain = _plain_sum(hidden, weight, labels)
    fused = supervised_loss_sum(hidden, weight, labels, chunk_size=8)
    assert abs(float(fused) - float(plain)) <= 1e-5 * abs(float(plain))


def test_supervised_rows_are_gathered_row_major():
    hidden = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)
    labels = torch.tensor([[-100, 4, -100], [7, -100, 9]])
    rows, targets = supervised_rows(hidden, labels)
    assert rows.flatten().tolist() == [1.0, 3.0, 5.0]
    assert targets.tolist() == [4, 7, 9]


def test_mismatched_shapes_and_bad_chunks_are_refused():
    hidden, weight, labels = _case()
    with pytest.raises(ValueError, match="disagree"):
        supervised_loss_sum(hidden[:, :-1], weight, labels)
    with pytest.raises(ValueError, match="chunk_size"):
        supervised_loss_sum(hidden, weight, labels, chunk_size=0)
