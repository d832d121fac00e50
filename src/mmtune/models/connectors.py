"""Connectors: vision features ``[N, P, C]`` -> decoder embeddings ``[N, num_tokens, dim]``.

A registry by exact name (``connector.kind``):

- ``mlp``: LLaVA-1.5's ``Linear -> GELU -> Linear`` (named ``linear_1`` / ``linear_2`` like transformers'
  ``multi_modal_projector``), one output token per feature token, placed where the text had ``<image>``.
  With ``merge`` m > 1, each m x m block of neighbouring patch features is concatenated (row-major
  within the block) into one token before the MLP, as Qwen2-VL's patch merger does.
- ``qformer``: LLaMA2-Accessory's ``llama_qformerv2``: ``proj = Sequential(Linear, LayerNorm)`` on the
  Q-Former features between two learned boundary embeddings ``start_img`` / ``end_img`` (1, 1, dim),
  so ``num_query + 2`` tokens right after BOS. It needs a BLIP-2 tower.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from mmtune.config import ConnectorConfig
from mmtune.errors import ConfigError


def merge_patches(features: torch.Tensor, merge: int) -> torch.Tensor:
    """``features`` [N, g*g, C] on a g x g patch grid -> [N, (g/merge)^2, merge^2 * C]: each merge x merge
    block of neighbours concatenated (row-major within the block), blocks in row-major order."""
    n, p, c = features.shape
    cell = math.isqrt(p) // merge
    grid = features.reshape(n, cell, merge, cell, merge, c).transpose(2, 3)
    return grid.reshape(n, cell * cell, merge * merge * c)


class MLPConnector(nn.Module):
    """LLaVA-1.5 projector: ``linear_2(gelu(linear_1(x)))``, optionally on merged patch blocks."""

    def __init__(self, in_dim: int, dim: int, hidden_dim: Optional[int] = None, merge: int = 1):
        super().__init__()
        hidden = hidden_dim or dim
        self.merge = merge
        self.linear_1 = nn.Linear(in_dim * merge * merge, hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden, dim)

    def reset_parameters(self) -> None:
        """PyTorch's default Linear initialisation (as LLaVA trains its projector from)."""
        self.linear_1.reset_parameters()
        self.linear_2.reset_parameters()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` [N, P, in_dim] -> [N, P / merge^2, dim]."""
        if self.merge > 1:
            features = merge_patches(features, self.merge)
        return self.linear_2(self.act(self.linear_1(features)))


class QFormerConnector(nn.Module):
    """LLaMA2-Accessory ``llama_qformerv2``: ``[start_img, LayerNorm(Linear(q)), end_img]``."""

    def __init__(self, in_dim: int, dim: int, hidden_dim: Optional[int] = None, merge: int = 1):
        super().__init__()
        assert merge == 1, "ConnectorConfig.check allows merge only for mlp"
        if hidden_dim is not None:
            raise ConfigError("connector.hidden_dim", hidden_dim, "null for the qformer connector (no hidden layer)")
        self.proj = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim))
        self.start_img = nn.Parameter(torch.empty(1, 1, dim))
        self.end_img = nn.Parameter(torch.empty(1, 1, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default Linear/LayerNorm init; boundary tokens uniform in [0, 1) as LLaMA2-Accessory's ``torch.rand``."""
        for module in self.proj:
            module.reset_parameters()
        nn.init.uniform_(self.start_img)
        nn.init.uniform_(self.end_img)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` [N, q, in_dim] -> [N, q + 2, dim]: start token, projected queries, end token."""
        queries = self.proj(features)
        n = queries.shape[0]
        start = self.start_img.expand(n, -1, -1).to(queries.dtype)
        end = self.end_img.expand(n, -1, -1).to(queries.dtype)
        return torch.cat([start, queries, end], dim=1)


CONNECTORS: dict[str, Callable[..., nn.Module]] = {"mlp": MLPConnector, "qformer": QFormerConnector}
# connector kind -> the vision kinds it accepts
_COMPATIBLE = {"mlp": ("clip", "siglip", "blip2"), "qformer": ("blip2",)}
# vision kinds whose features are a square grid of patches (blip2 gives Q-Former queries)
_PATCH_GRID = ("clip", "siglip")


def check_connector(cfg: ConnectorConfig, vision_kind: str, n_features: int) -> None:
    """ConfigError unless connector ``cfg`` works on ``n_features`` features of a ``vision_kind`` tower."""
    if cfg.kind not in CONNECTORS:
        raise ConfigError("connector.kind", cfg.kind, "one of " + ", ".join(sorted(CONNECTORS)))
    if vision_kind not in _COMPATIBLE[cfg.kind]:
        raise ConfigError("connector.kind", cfg.kind,
                          f"a connector that works with vision.kind={vision_kind!r} "
                          f"({cfg.kind} needs {' or '.join(_COMPATIBLE[cfg.kind])})")
    side = math.isqrt(n_features)
    if cfg.merge > 1 and (vision_kind not in _PATCH_GRID or side * side != n_features):
        raise ConfigError("connector.merge", cfg.merge,
                          f"1: the {vision_kind} tower's features are not a square grid of patches")
    if side % cfg.merge:
        raise ConfigError("connector.merge", cfg.merge, f"1 or a divisor of the side of the {side}x{side} patch grid")


def connector_tokens(cfg: ConnectorConfig, vision_kind: str, n_features: int) -> int:
    """Image tokens the connector makes from ``n_features`` tower features: one per merged patch block
    (mlp), or the queries between the two boundary tokens (qformer). Checked as :func:`check_connector`."""
    check_connector(cfg, vision_kind, n_features)
    if cfg.kind == "qformer":
        return n_features + 2
    return n_features // (cfg.merge * cfg.merge)


def build_connector(cfg: ConnectorConfig, vision_kind: str, in_dim: int, dim: int, n_features: int) -> nn.Module:
    """The connector ``cfg.kind`` from ``n_features`` tower features of width ``in_dim`` per image to the
    decoder's ``dim``."""
    check_connector(cfg, vision_kind, n_features)
    return CONNECTORS[cfg.kind](in_dim, dim, cfg.hidden_dim, cfg.merge)
