"""mmtune ``VisionLanguageModel`` (CLIP or SigLIP tower + ``mlp`` connector) <-> transformers ``Llava``.

State-dict keys (transformers 5 layout): ``vision.vision_model.X`` <-> ``model.vision_tower.X``,
``connector.linear_{1,2}`` <-> ``model.multi_modal_projector.linear_{1,2}``, and the decoder through
:mod:`mmtune.models.adapters.hf_llama` with ``model.`` -> ``model.language_model.`` (``lm_head`` stays).
Reading also accepts the transformers 4 layout of Hub checkpoints (``language_model.model.*``,
``language_model.lm_head``, ``vision_tower.vision_model.*``, ``multi_modal_projector.*``) and the mixed
layout transformers 5's ``save_pretrained`` writes (4's decoder names, ``vision_tower.*``), renamed to
the transformers 5 names as transformers' own ``conversion_mapping`` does; :func:`from_llava_tensor` is the one rename rule,
one tensor at a time (the streaming import in :mod:`mmtune.formats.convert_llava` and
:func:`from_llava_state_dict` both use it).

transformers looks the image token up in the embedding before overwriting it, so a Llava model needs
``image_token_id < vocab_size``; ``to_llava_state_dict(..., vocab_size=N)`` grows the embedding and
output rows to ``N`` with the mean embedding (as transformers' own LLaVA conversion does).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from mmtune.config import ConnectorConfig, ModelConfig, VisionConfig
from mmtune.errors import CheckpointError
from mmtune.models.adapters.hf_llama import from_hf_config, from_hf_state_dict, to_hf_config, to_hf_state_dict

_OURS_TO_HF = {"vision.vision_model.": "model.vision_tower.", "connector.": "model.multi_modal_projector."}
_HF_TO_OURS = {new: old for old, new in _OURS_TO_HF.items()}
# First match wins. transformers 5 holds CLIP / SigLIP vision models without their ``vision_model.`` level
# (its conversion_mapping strips it on load), and this version's save_pretrained writes the transformers 4
# names for the decoder but ``vision_tower.*`` without that level: every variant is accepted.
_HF4_TO_HF5 = {"language_model.model.": "model.language_model.", "language_model.lm_head.": "lm_head.",
               "vision_tower.vision_model.": "model.vision_tower.",
               "model.vision_tower.vision_model.": "model.vision_tower.",
               "vision_tower.": "model.vision_tower.", "multi_modal_projector.": "model.multi_modal_projector."}
SELECT_STRATEGY = {"clip": "default", "siglip": "full"}
"""``vision_feature_select_strategy`` of each tower kind: mmtune drops CLIP's CLS token and keeps every
SigLIP token (``models.vision.PatchTower``)."""
_VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")
_TOWER_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip", "clip": "clip", "siglip": "siglip"}


def _rename(key: str, table: dict[str, str]) -> Optional[str]:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    return None


def _check_supported(vision_cfg: VisionConfig, connector_cfg: ConnectorConfig, model_cfg: ModelConfig) -> None:
    if vision_cfg.kind not in SELECT_STRATEGY or connector_cfg.kind != "mlp":
        raise CheckpointError(f"the Llava layout holds a clip or siglip tower with the mlp connector, not "
                              f"vision.kind={vision_cfg.kind!r} with connector.kind={connector_cfg.kind!r}")
    if connector_cfg.merge != 1:
        raise CheckpointError(f"the Llava layout has one image token per patch; connector.merge="
                              f"{connector_cfg.merge} cannot be exported (export the language model with --llm-only)")
    if connector_cfg.hidden_dim not in (None, model_cfg.dim):
        raise CheckpointError(f"the Llava projector's hidden size is the decoder's dim ({model_cfg.dim}); "
                              f"connector.hidden_dim={connector_cfg.hidden_dim} cannot be exported")


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    extra = t.mean(dim=0, keepdim=True).expand(rows - t.shape[0], -1)
    return torch.cat([t, extra.to(t.dtype)], dim=0)


def to_llava_state_dict(sd: dict[str, torch.Tensor], model_cfg: ModelConfig,
                        vocab_size: Optional[int] = None) -> dict[str, torch.Tensor]:
    """A :class:`VisionLanguageModel` state dict under ``LlavaForConditionalGeneration`` names.

    ``vocab_size`` larger than ``model_cfg.vocab_size`` appends mean-embedding rows to the embedding and
    output matrices (room for the image token).
    """
    llm = {k[len("llm."):]: v for k, v in sd.items() if k.startswith("llm.")}
    out = {}
    for key, tensor in to_hf_state_dict(llm, model_cfg).items():
        out[key.replace("model.", "model.language_model.", 1) if key.startswith("model.") else key] = tensor
    for key, tensor in sd.items():
        if key.startswith("llm."):
            continue
        renamed = _rename(key, _OURS_TO_HF)
        if renamed is None:
            raise CheckpointError(f"no Llava name for {key!r} (only clip/siglip towers with the mlp connector)")
        out[renamed] = tensor
    if vocab_size is not None and vocab_size > model_cfg.vocab_size:
        for key in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            if key in out:
                out[key] = _pad_rows(out[key], vocab_size)
    return out


def to_hf5_name(name: str) -> str:
    """A Llava tensor name in the transformers 5 layout (transformers 4 names renamed, others unchanged)."""
    return _rename(name, _HF4_TO_HF5) or name


def from_llava_tensor(name: str, tensor: torch.Tensor, model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """One ``LlavaForConditionalGeneration`` tensor (transformers 4 or 5 name) under mmtune names.

    Decoder tensors go through :func:`~mmtune.models.adapters.hf_llama.from_hf_state_dict` (q/k rows
    un-permuted; a tied embedding also fills the output); embedding/output rows beyond
    ``model_cfg.vocab_size`` are cut; ``position_ids`` buffers give nothing; any other name is a
    :class:`CheckpointError`.
    """
    key = to_hf5_name(name)
    if key.startswith(("model.language_model.", "lm_head.")):
        hf = key.replace("model.language_model.", "model.", 1)
        if hf in _VOCAB_ROWS:
            tensor = tensor[:model_cfg.vocab_size]
        return {f"llm.{k}": v for k, v in from_hf_state_dict({hf: tensor}, model_cfg).items()}
    ours = _rename(key, _HF_TO_OURS)
    if ours is not None:
        return {ours: tensor}
    if key.endswith("position_ids"):
        return {}
    raise CheckpointError(f"not a Llava state dict: unexpected key {name!r}")


def from_llava_state_dict(sd: dict[str, torch.Tensor], model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A ``LlavaForConditionalGeneration`` state dict (transformers 4 or 5 names) under mmtune names.

    Embedding/output rows beyond ``model_cfg.vocab_size`` (padding added for the image token) are cut.
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        for key, value in from_llava_tensor(name, tensor, model_cfg).items():
            out.setdefault(key, value)  # a tied output is filled once, from the embedding
    return out


def to_llava_config(model_cfg: ModelConfig, vision_cfg: VisionConfig, connector_cfg: ConnectorConfig,
                    tower_hf_config: dict[str, Any], image_token_id: int,
                    vocab_size: Optional[int] = None) -> dict[str, Any]:
    """``config.json`` values of a ``LlavaForConditionalGeneration`` equal to the mmtune model.

    ``tower_hf_config`` is the tower's transformers config (``model.vision.hf_config()``);
    ``vocab_size`` overrides the decoder's (see :func:`to_llava_state_dict`).
    """
    _check_supported(vision_cfg, connector_cfg, model_cfg)
    text = to_hf_config(model_cfg)
    text.update(model_type="llama", vocab_size=vocab_size or model_cfg.vocab_size)
    if image_token_id >= text["vocab_size"]:
        raise CheckpointError(f"transformers' Llava embeds the image token: image_token_id {image_token_id} "
                              f"must be below vocab_size {text['vocab_size']} (pass a larger vocab_size)")
    vision = dict(tower_hf_config, model_type=f"{vision_cfg.kind}_vision_model")
    if vision_cfg.kind == "siglip":
        vision["vision_use_head"] = False
    patches = (vision.get("image_size", 224) // vision.get("patch_size", 32)) ** 2
    return {
        "model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
        "text_config": text, "vision_config": vision, "image_token_index": image_token_id,
        "vision_feature_layer": vision_cfg.feature_layer,
        "vision_feature_select_strategy": SELECT_STRATEGY[vision_cfg.kind],
        "projector_hidden_act": "gelu", "multimodal_projector_bias": True, "image_seq_length": patches,
        "tie_word_embeddings": model_cfg.tie_embeddings,
    }


def _tower_from_llava(vision: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(tower kind, transformers vision config values) of a Llava ``vision_config``; a full CLIP / SigLIP
    config contributes its nested ``vision_config``."""
    model_type = vision.get("model_type")
    if model_type not in _TOWER_TYPES:
        raise CheckpointError(f"config.json: vision_config model_type {model_type!r} is not supported "
                              f"({', '.join(_TOWER_TYPES)})")
    kind = _TOWER_TYPES[model_type]
    values = dict(vision.get("vision_config") or {}) if model_type == kind else dict(vision)
    drop = ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype", "_name_or_path")
    return kind, {k: v for k, v in values.items() if k not in drop}


def _feature_settings(d: dict[str, Any], kind: str) -> int:
    """``vision_feature_layer`` of a Llava config, checked together with the selection strategy."""
    layer = d.get("vision_feature_layer", -2)
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise CheckpointError(f"config.json: vision_feature_layer {layer!r} concatenates several layers; "
                              "mmtune's towers take one layer (an integer)")
    strategy = d.get("vision_feature_select_strategy", "default")
    if strategy != SELECT_STRATEGY[kind]:
        raise CheckpointError(f"config.json: vision_feature_select_strategy {strategy!r} with a {kind} tower is not "
                              f"supported (mmtune's {kind} tower is {SELECT_STRATEGY[kind]!r}: "
                              f"{'CLS dropped' if kind == 'clip' else 'every token kept'})")
    return layer


def from_llava_config(d: dict[str, Any], embedding_rows: int) -> tuple[ModelConfig, VisionConfig, ConnectorConfig]:
    """The mmtune ``model`` / ``vision`` / ``connector`` sections of a Llava ``config.json`` (the inverse of
    :func:`to_llava_config`). The decoder's ``vocab_size`` is ``embedding_rows`` (the checkpoint's rows,
    padding included); the vision section holds the tower only (image settings come from the processor)."""
    for key in ("text_config", "vision_config"):
        if not isinstance(d.get(key), dict):
            raise CheckpointError(f"config.json: no {key} (not a LlavaForConditionalGeneration config)")
    act = d.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"config.json: projector_hidden_act {act!r} is not supported (mmtune's mlp connector "
                              "uses gelu)")
    if not d.get("multimodal_projector_bias", True):
        raise CheckpointError("config.json: multimodal_projector_bias false is not supported (mmtune's mlp "
                              "connector has biases)")
    model_cfg = from_hf_config({**d["text_config"], "vocab_size": embedding_rows})
    kind, tower = _tower_from_llava(d["vision_config"])
    vision_cfg = VisionConfig(kind=kind, hf_config=tower, feature_layer=_feature_settings(d, kind))  # type: ignore[arg-type]
    return model_cfg, vision_cfg, ConnectorConfig(kind="mlp")
