"""LLaMA2-Accessory (``llama_qformerv2``) layout <-> mmtune ``VisionLanguageModel`` names.

Accessory wraps its ``Transformer`` in a ``MetaModel`` attribute ``llma``, so every key starts with
``llma.``. Decoder keys follow Meta's names (and Meta's model-parallel split dims,
:func:`mmtune.models.adapters.meta.shard_dim`); the BLIP-2 part is a transformers ``Blip2Model`` stored
as ``llma.qformer`` (``vision_model.*``, ``qformer.*``, ``query_tokens``; its language model and
language projection are ``None``); the connector is ``llma.qformer_proj`` (``0`` Linear 768->dim,
``1`` LayerNorm) plus the boundary embeddings ``llma.start_img`` / ``llma.end_img`` of shape ``(1, 1,
dim)``. Only decoder tensors are model-parallel; the rest is replicated in every shard.
"""

from __future__ import annotations

from typing import Any, Optional

from mmtune.config import ModelConfig
from mmtune.errors import CheckpointError
from mmtune.models.adapters import meta

PREFIX = "llma."
_TOWER = "qformer."
_CONNECTOR = ("qformer_proj.", "start_img", "end_img")
SUPPORTED_TYPES = ("llama_qformerv2", "llama")
# Keys of Blip2Model that Accessory sets to None (absent from its files) or that hold no weights.
_BLIP2_DROPPED = ("language_model.", "language_projection.")


def from_accessory_key(key: str, vision_prefix: str = "vision.") -> tuple[str, Optional[int]]:
    """(mmtune ``VisionLanguageModel`` key, model-parallel concat dim or None) for an Accessory key.

    ``vision_prefix`` is where the BLIP-2 tower's transformers names live in the mmtune model.
    """
    if not key.startswith(PREFIX):
        raise CheckpointError(f"not a LLaMA2-Accessory key (no {PREFIX!r} prefix): {key!r}")
    name = key[len(PREFIX):]
    if name.startswith(_TOWER):
        return vision_prefix + name[len(_TOWER):], None
    if name.startswith(_CONNECTOR):
        return "connector." + name.replace("qformer_proj.", "proj.", 1), None
    return "llm." + name, meta.shard_dim(name)


def blip2_tower_key(key: str, vision_prefix: str = "vision.") -> Optional[str]:
    """The mmtune key of a Hugging Face ``Blip2Model`` / ``Blip2ForConditionalGeneration`` key, or
    None for the parts mmtune does not use (the OPT/T5 language model and its projection)."""
    if key.startswith(_BLIP2_DROPPED):
        return None
    return vision_prefix + key


def is_ignored(key: str) -> bool:
    """Whether an Accessory key carries nothing to convert (Meta's cached rope table)."""
    return key[len(PREFIX):] in meta.IGNORED_KEYS if key.startswith(PREFIX) else False


def config_from_accessory(args: dict[str, Any], vocab_size: int) -> ModelConfig:
    """A :class:`ModelConfig` from Accessory's ``config.json`` (``dataclasses.asdict(ModelArgs)``) or a
    Meta ``params.json``; ``vocab_size`` is the embedding rows found in the checkpoint.

    ``max_batch_size`` is dropped; a linear ``rope_scaling`` factor is refused (mmtune implements only
    Llama-3 frequency scaling).
    """
    args = {k: v for k, v in args.items() if k != "max_batch_size"}
    scaling = args.pop("rope_scaling", None)
    if scaling not in (None, 1, 1.0):
        raise CheckpointError(f"config.json: linear rope_scaling={scaling!r} is not supported")
    max_seq_len = int(args.pop("max_seq_len", None) or 4096)
    return meta.config_from_params(args, vocab_size=vocab_size, max_seq_len=max_seq_len)


def check_llama_type(meta_json: dict[str, Any]) -> str:
    """The ``llama_type`` of Accessory's ``meta.json``, refused unless mmtune can load it."""
    kind = meta_json.get("llama_type", "llama_qformerv2")
    if kind not in SUPPORTED_TYPES:
        raise CheckpointError(f"meta.json: llama_type {kind!r} is not supported ({', '.join(SUPPORTED_TYPES)})")
    return kind
