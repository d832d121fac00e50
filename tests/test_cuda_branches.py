"""The CUDA-only choices, each isolated in one function, checked on CPU: fused AdamW, pinned memory and
the CUDA RNG state of checkpoints (a stub stands in for ``torch.cuda``)."""

from __future__ import annotations

import random

import pytest
import torch

from mmtune.bench.train import pin_memory_for
from mmtune.training import checkpoint as ckpt
from mmtune.training.optim import fused_adamw


@pytest.mark.parametrize("device, expected", [("cuda", True), ("cpu", True), ("meta", None)])
def test_fused_adamw_is_chosen_where_pytorch_has_the_kernel(device, expected):
    assert fused_adamw(torch.device(device)) is expected


@pytest.mark.parametrize("device, expected", [("cuda", True), ("cpu", False)])
def test_batches_are_pinned_only_for_cuda(device, expected):
    assert pin_memory_for(torch.device(device)) is expected


class StubCuda:
    """What :func:`~mmtune.training.checkpoint.cuda_rng_state` reads of ``torch.cuda``."""

    def __init__(self, available: bool):
        self.available, self.state = available, torch.arange(4, dtype=torch.uint8)

    def is_available(self) -> bool:
        return self.available

    def get_rng_state(self) -> torch.Tensor:
        return self.state.clone()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.state = state.clone()


def test_cuda_rng_state_is_saved_and_restored_only_where_cuda_is():
    gpu = StubCuda(True)
    saved = ckpt.cuda_rng_state(gpu)
    assert saved["cuda"].tolist() == [0, 1, 2, 3]
    gpu.state = torch.zeros(4, dtype=torch.uint8)
    assert ckpt.set_cuda_rng_state(gpu, saved) and gpu.state.tolist() == [0, 1, 2, 3]
    cpu = StubCuda(False)
    assert ckpt.cuda_rng_state(cpu) == {}
    assert not ckpt.set_cuda_rng_state(cpu, saved)  # a CPU run resuming a GPU checkpoint keeps its own
    assert not ckpt.set_cuda_rng_state(gpu, {})


def test_rng_states_round_trip():
    state = ckpt.rng_state()
    expected = (random.random(), torch.rand(3))
    random.random(), torch.rand(3)
    ckpt.set_rng_state(state)
    again = (random.random(), torch.rand(3))
    assert again[0] == expected[0] and torch.equal(again[1], expected[1])
    assert ("cuda" in state) is torch.cuda.is_available()


@pytest.mark.parametrize("card, expected", [("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12),
                                            ("NVIDIA GeForce GT 710", None)])
def test_mfu_peak_is_read_from_the_card_name_and_absent_on_cpu(card, expected, monkeypatch):
    from mmtune.training.metrics import peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: card)
    assert peak_flops(torch.device("cuda", 0)) == expected
    assert peak_flops(torch.device("cpu")) is None
