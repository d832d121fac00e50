"""bf16 mixed precision and compiled blocks, exercised on CPU the way the trainer applies them.

* Two gloo ranks, FSDP2 through :func:`~mmtune.distributed.parallelize.parallelize` with bf16 parameters
  and fp32 gradient reduction (``MixedPrecisionPolicy``), two micro-batches per rank and step with the
  trainer's gradient sync on the last one only: per-step losses within 2e-3 relative of the fp32 run,
  and the accumulated gradients equal (1e-5 relative) to syncing every micro-batch, so unsynced
  micro-batches accumulate in fp32, not in bf16.
* One process, activation checkpointing then ``compile`` per block, packed rows (the compiled blocks
  take the masked path): per-step losses equal to eager within 1e-5 in fp32 (the bare module), and
  within 2e-3 relative in bf16, where one rank is wrapped in FSDP2 for the cast (the one-GPU check's
  layout: FSDP2 hooks around compiled, checkpointed blocks).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from mmtune.config import ModelConfig, ParallelConfig
from mmtune.distributed.parallelize import decoder_blocks, parallelize
from mmtune.models.llama import Transformer
from mmtune.models.packed_attention import blocks_compiled

CFG = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=101, max_seq_len=48)
ROWS, SEQ, MICRO, STEPS = 2, 48, 2, 3


def _batch(step: int, micro: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and packed sample ids [ROWS, SEQ] of one micro-batch (the same on any run)."""
    gen = torch.Generator().manual_seed(1000 * step + 10 * micro + rank)
    tokens = torch.randint(0, CFG.vocab_size, (ROWS, SEQ), generator=gen)
    ids = torch.tensor([0] * 20 + [1] * 15 + [2] * 11 + [-1] * 2).expand(ROWS, SEQ)
    return tokens, ids


def _loss(model: torch.nn.Module, tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1], sample_ids=ids[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())


def _model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(CFG)
    model.init_weights()
    return model


def _train(model: torch.nn.Module, rank: int, world: int, sync_every: bool) -> tuple[list[float], list]:
    """STEPS AdamW steps of MICRO micro-batches per rank; returns the global losses and the first
    step's full gradients."""
    from torch.distributed.fsdp import FSDPModule

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses, first_grads = [], []
    for step in range(STEPS):
        total = torch.zeros(())
        for micro in range(MICRO):
            if isinstance(model, FSDPModule):
                model.set_requires_gradient_sync(sync_every or micro == MICRO - 1)
            loss = _loss(model, *_batch(step, micro, rank)) / MICRO
            loss.backward()
            total += loss.detach().float()
        torch.distributed.all_reduce(total)
        losses.append(float(total) / world)
        if step == 0:
            first_grads = [getattr(p.grad, "full_tensor", p.grad.detach)().float() for p in model.parameters()]
        opt.step()
        opt.zero_grad(set_to_none=True)
    return losses, first_grads


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from mmtune.distributed.env import init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    env = init_distributed()
    runs = {}
    for name, dtype, sync_every in (("fp32", torch.float32, False), ("bf16", torch.bfloat16, False),
                                    ("bf16_sync_every", torch.bfloat16, True)):
        model = parallelize(_model(), ParallelConfig(activation_checkpointing=True), env.mesh, None, dtype)
        runs[name] = _train(model, rank, world, sync_every)
    if rank == 0:
        grads = {name: [g.tolist() for g in run[1]] for name, run in runs.items()}
        Path(out).write_text(json.dumps({"losses": {n: r[0] for n, r in runs.items()}, "grads": grads}))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bf16_fsdp_on_two_ranks_tracks_fp32_and_accumulates_unsynced_grads_in_fp32(tmp_path):
    out = tmp_path / "runs.json"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    runs = json.loads(out.read_text())
    fp32, bf16 = runs["losses"]["fp32"], runs["losses"]["bf16"]
    assert bf16 != fp32  # the policy really computed in bf16
    assert bf16 == pytest.approx(fp32, rel=2e-3)
    for last_only, every in zip(runs["grads"]["bf16"], runs["grads"]["bf16_sync_every"]):
        torch.testing.assert_close(torch.tensor(last_only), torch.tensor(every), rtol=1e-5, atol=1e-7)


def _single_run(compiled: bool, dtype: torch.dtype = torch.float32) -> list[float]:
    from mmtune.distributed.env import init_distributed

    env = init_distributed()
    model = parallelize(_model(), ParallelConfig(activation_checkpointing=True, compile=compiled), env.mesh,
                        None, dtype)
    assert blocks_compiled(decoder_blocks(model)) is compiled
    return _train(model, 0, 1, False)[0]


def test_compiled_blocks_equal_eager_on_packed_rows():
    torch._dynamo.reset()
    eager, compiled = _single_run(False), _single_run(True)
    assert compiled == pytest.approx(eager, rel=1e-5, abs=1e-6)


def test_compiled_blocks_under_bf16_fsdp_track_eager_bf16():
    torch._dynamo.reset()
    eager, compiled = _single_run(False, torch.bfloat16), _single_run(True, torch.bfloat16)
    assert compiled == pytest.approx(eager, rel=2e-3)
