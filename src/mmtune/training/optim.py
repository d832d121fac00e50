"""AdamW with decay only on matrices, warm-up then cosine decay, and global-norm clipping over DTensors.

Weight decay applies to the ``weight`` of ``Linear``, ``Embedding`` and convolution modules; norms,
biases and free-standing parameters (the image boundary embeddings, query tokens) never decay.
Frozen parameters (``requires_grad=False``) are left out of the optimizer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Optional

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LambdaLR

from mmtune.config import TrainingConfig

DECAYED_MODULES = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: decayed matrices and everything else."""
    decay_ids = set()
    for module in model.modules():
        weight = getattr(module, "weight", None) if isinstance(module, DECAYED_MODULES) else None
        if isinstance(weight, nn.Parameter):
            decay_ids.add(id(weight))
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if id(param) in decay_ids else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainingConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters with PyTorch's fused kernel (CPU and CUDA); lr starts at
    ``cfg.lr``."""
    groups = param_groups(model, cfg.weight_decay)
    assert groups, "the model has no trainable parameters"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8, fused=fused_adamw(device))


def fused_adamw(device: torch.device) -> Optional[bool]:
    """AdamW's ``fused`` flag for ``device``: True on CUDA and CPU (PyTorch has fused kernels there),
    None (PyTorch's default for-each) elsewhere."""
    return True if device.type in ("cuda", "cpu") else None


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """The learning rate of (0-based) optimizer step ``step``: linear warm-up from 0 over
    ``warmup_steps``, then a half cosine from ``lr`` down to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig, total_steps: int) -> LambdaLR:
    """A LambdaLR following :func:`lr_at` with ``warmup_fraction`` of ``total_steps`` as warm-up."""
    warmup = round(cfg.warmup_fraction * total_steps)

    def factor(step: int) -> float:
        return lr_at(step, total_steps, warmup, cfg.lr, cfg.min_lr) / cfg.lr

    return LambdaLR(optimizer, factor)


def _grad_groups(params: Iterable[nn.Parameter]) -> dict[object, list[torch.Tensor]]:
    """Gradients grouped by DTensor mesh and placements (plain tensors under key None)."""
    groups: dict[object, list[torch.Tensor]] = defaultdict(list)
    for p in params:
        if p.grad is None:
            continue
        g = p.grad
        key = (g.device_mesh, tuple(g.placements)) if isinstance(g, DTensor) else None
        groups[key].append(g)
    return groups


@torch.no_grad()
def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Global L2 norm of all gradients (sharded or not), scaling them to ``max_norm`` when larger.

    ``max_norm <= 0`` only measures. Returns the norm before clipping (``inf``/``nan`` when a gradient
    is not finite, in which case nothing is scaled).
    """
    groups = _grad_groups(params)
    total_sq = 0.0
    for key, grads in groups.items():
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        total_sq += float(norm.double() ** 2)
    total = math.sqrt(total_sq)
    if max_norm > 0 and math.isfinite(total) and total > max_norm:
        coef = max_norm / (total + 1e-6)
        for grads in groups.values():
            torch._foreach_mul_(grads, coef)
    return total
