"""Fresh weights one unit at a time, each from its own seeded generator.

A *unit* is a piece of a :class:`~mmtune.models.vlm.VisionLanguageModel` that is initialised as a whole:
the decoder's embedding, each decoder block, the final norm and the (untied) output head, the connector,
and the vision tower (built whole by transformers). Each unit's weights come from
``torch.manual_seed(unit_seed(seed, name))``, so they do not depend on which other units are fresh, on
the order they are made in, or on how many ranks share the model: a model built in one process
(:meth:`VisionLanguageModel.init_weights`) and one materialised shard by shard on N ranks (the trainer,
which makes one unit at a time on the CPU and keeps its slice) hold the same values, and no rank ever
initialises the whole model at once.
"""

from __future__ import annotations

import copy
import zlib
from typing import TYPE_CHECKING

import torch
from torch import nn

from mmtune.models.llama import init_decoder_module
from mmtune.models.vision import build_tower

if TYPE_CHECKING:
    from mmtune.models.vlm import VisionLanguageModel


def unit_seed(seed: int, unit: str) -> int:
    """The generator seed of ``unit`` in a run seeded with ``seed``."""
    return (int(seed) * 1_000_003 + zlib.crc32(unit.encode())) % (2**63)


def init_units(model: "VisionLanguageModel") -> list[str]:
    """The names of ``model``'s units, in module order (see the module docstring)."""
    llm = model.llm
    units = ["llm.tok_embeddings"] + [f"llm.layers.{i}" for i in range(len(llm.layers))] + ["llm.norm"]
    if llm.output.weight is not llm.tok_embeddings.weight:
        units.append("llm.output")
    if model.vision is not None:
        units += ["vision", "connector"]
    return units


def unit_of(key: str, units: list[str]) -> str:
    """The unit a state-dict key belongs to (the longest unit name that prefixes it)."""
    hits = [u for u in units if key == u or key.startswith(u + ".")]
    if not hits:
        raise KeyError(f"{key} belongs to no unit of the model")
    return max(hits, key=len)


def _materialised(module: nn.Module) -> nn.Module:
    """A CPU copy of ``module`` (which may live on the meta device) with uninitialised storage."""
    if any(p.is_meta for p in module.parameters()):
        twin = copy.deepcopy(module)
        return twin.to_empty(device="cpu")
    return copy.deepcopy(module).cpu()


@torch.no_grad()
def fresh_unit(model: "VisionLanguageModel", unit: str, seed: int) -> dict[str, torch.Tensor]:
    """The fresh weights of ``unit`` under full state-dict names (CPU, fp32).

    ``model`` is a plain (not sharded) model on any device, the meta device included; only the unit is
    built on the CPU.
    """
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(unit_seed(seed, unit))
        if unit == "vision":
            module = build_tower(model.vision_cfg)
        else:
            module = _materialised(model.get_submodule(unit))
            if unit == "connector":
                module.reset_parameters()
            else:
                init_decoder_module(module, model.model_cfg.n_layers, prefix=unit.removeprefix("llm."))
    return {f"{unit}.{key}": value for key, value in module.state_dict().items()}
