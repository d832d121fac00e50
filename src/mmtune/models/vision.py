"""Vision towers built with transformers: CLIP, SigLIP and BLIP-2 (ViT + Q-Former + query tokens).

A tower is built from a :class:`~mmtune.config.VisionConfig`: its transformers config comes from
``vision.hf_config`` on top of the ``config.json`` of a local checkpoint directory (``vision.path``) when
one is given. Weights are random until :meth:`load_pretrained` reads them from such a directory (single
``model.safetensors`` or shards with an index). Every tower holds the transformers vision model as
``vision_model`` so that its keys match transformers' full checkpoints (``CLIPModel``, ``SiglipModel``,
``Blip2*``) one to one; BLIP-2 adds ``query_tokens`` and ``qformer`` under transformers' names, and only
those keys are read from a BLIP-2 checkpoint (its OPT language model is never built).

``forward(pixel_values [N, 3, H, W])`` returns features ``[N, num_tokens, hidden_size]``:
CLIP/SigLIP the hidden state of layer ``feature_layer`` (CLS dropped for CLIP, as LLaVA-1.5's "default"
strategy), BLIP-2 the Q-Former's last hidden state (``Blip2Model.get_qformer_features``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from mmtune import presets
from mmtune.config import VisionConfig
from mmtune.errors import CheckpointError, ConfigError
from mmtune.models.weights import WeightsReader, check_state_dict

_MODEL_TYPES = {  # vision.kind -> config.json model_type -> layout
    "clip": {"clip": "full", "clip_vision_model": "vision"},
    "siglip": {"siglip": "full", "siglip_vision_model": "vision"},
    "blip2": {"blip-2": "full"},
}
_FOREIGN_PREFIXES = ("text_model.", "language_model.", "language_projection.", "logit_scale", "logit_bias",
                     "text_projection.", "visual_projection.")
_DEFAULT_SIZE = 224
_CONFIG_NOISE = ("transformers_version", "architectures", "model_type", "_name_or_path", "dtype",
                 "torch_dtype", "output_hidden_states", "output_attentions", "return_dict", "id2label",
                 "label2id", "problem_type", "chunk_size_feed_forward", "is_encoder_decoder")


@dataclass(frozen=True)
class ImageSettings:
    """How the data side turns an image into ``pixel_values`` for a tower."""

    size: int
    """Square input resolution in pixels."""
    mean: tuple[float, float, float]
    """Per-channel normalisation mean (on 0..1 values)."""
    std: tuple[float, float, float]
    """Per-channel normalisation std."""
    resize: str
    """center_crop, pad or resize (see ``VisionConfig.resize``)."""
    max_pixels: int
    """Larger images are refused."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON ({exc})") from None


def _dir_config(vision_cfg: VisionConfig) -> dict:
    """The tower part of ``vision.path``'s config.json (empty without a path), checked against the kind."""
    if not vision_cfg.path:
        return {}
    directory = Path(vision_cfg.path)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"vision.path {directory}: no config.json (expected a transformers checkpoint)")
    data = _read_json(directory / "config.json")
    layouts = _MODEL_TYPES.get(vision_cfg.kind, {})
    model_type = data.get("model_type")
    if model_type not in layouts:
        raise CheckpointError(f"vision.path {directory}: model_type {model_type!r} is not a {vision_cfg.kind} "
                              f"checkpoint ({', '.join(layouts) or 'no tower for this kind'})")
    if vision_cfg.kind == "blip2":
        return {k: data[k] for k in ("vision_config", "qformer_config", "num_query_tokens") if k in data}
    return dict(data["vision_config"]) if layouts[model_type] == "full" else data


def tower_hf_config(vision_cfg: VisionConfig) -> dict:
    """The transformers config values of the tower: the checkpoint's, then ``hf_config``, then
    ``image_size`` (for BLIP-2 the nested ``vision_config`` gets it). Keys transformers adds on save
    (version, architectures, model_type) are dropped."""
    merged = {**_dir_config(vision_cfg), **vision_cfg.hf_config}
    if vision_cfg.kind == "blip2":
        merged["vision_config"] = _clean(merged.get("vision_config", {}))
        merged["qformer_config"] = _clean(merged.get("qformer_config", {}))
        if vision_cfg.image_size is not None:
            merged["vision_config"]["image_size"] = vision_cfg.image_size
        return merged
    merged = _clean(merged)
    if vision_cfg.image_size is not None:
        merged["image_size"] = vision_cfg.image_size
    return merged


def _clean(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in _CONFIG_NOISE}


def _processor_size(processor: dict) -> Optional[int]:
    for key in ("crop_size", "size"):
        value = processor.get(key)
        if isinstance(value, int):
            return value
        if isinstance(value, dict):
            found = value.get("height", value.get("shortest_edge"))
            if found is not None:
                return int(found)
    return None


def resolve_image_settings(vision_cfg: VisionConfig) -> ImageSettings:
    """Image size and normalisation for ``vision_cfg``: its own fields first, else the tower config and
    the checkpoint's ``preprocessor_config.json``, else CLIP (clip, blip2) or SigLIP defaults."""
    if vision_cfg.kind == "none":
        raise ConfigError("vision.kind", "none", "a vision tower (clip, siglip, blip2) to take images")
    hf = tower_hf_config(vision_cfg)
    tower_size = (hf.get("vision_config", {}) if vision_cfg.kind == "blip2" else hf).get("image_size")
    processor: dict = {}
    if vision_cfg.path and (Path(vision_cfg.path) / "preprocessor_config.json").is_file():
        processor = _read_json(Path(vision_cfg.path) / "preprocessor_config.json")
    siglip = vision_cfg.kind == "siglip"
    mean = vision_cfg.image_mean or processor.get("image_mean") or (presets.SIGLIP_MEAN if siglip else presets.CLIP_MEAN)
    std = vision_cfg.image_std or processor.get("image_std") or (presets.SIGLIP_STD if siglip else presets.CLIP_STD)
    size = vision_cfg.image_size or tower_size or _processor_size(processor) or _DEFAULT_SIZE
    return ImageSettings(size=int(size), mean=tuple(float(m) for m in mean),  # type: ignore[arg-type]
                         std=tuple(float(s) for s in std), resize=vision_cfg.resize,  # type: ignore[arg-type]
                         max_pixels=vision_cfg.max_image_pixels)


class VisionTower(nn.Module):
    """What every tower shares: sizes, the resolved config, and loading from a checkpoint directory."""

    hidden_size: int
    num_tokens: int
    image_size: int
    checkpoint_prefixes: tuple[str, ...] = ("vision_model.",)
    ignored_prefixes: tuple[str, ...] = ()

    def hf_config(self) -> dict:
        """The transformers config values that rebuild this tower (for a self-contained saved model)."""
        raise NotImplementedError

    def load_pretrained(self, path: str | Path) -> None:
        """Copies the tower's weights from a transformers checkpoint directory (safetensors only)."""
        weights = dict(self.pretrained_tensors(path))
        check_state_dict(self, weights, f"vision.path {path}")
        self.load_state_dict(weights, strict=True)

    def pretrained_tensors(self, path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
        """The tower's weights in a transformers checkpoint directory (safetensors only) under the
        tower's own names, one tensor at a time; a full checkpoint's other models are skipped."""
        reader = WeightsReader.open(path)
        keys = [k for k in reader.keys() if self._select(k)]
        vision_only = not any(k.startswith(self.checkpoint_prefixes) for k in keys)
        for key, tensor in reader.tensors(self._select):
            name = f"vision_model.{key}" if vision_only else key
            if not name.startswith(self.ignored_prefixes) and not name.endswith("position_ids"):
                yield name, tensor

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Rebuilds the non-persistent buffers (transformers' ``position_ids``: ``arange``) after a
        meta-device build; any other buffer is an error, so a new tower kind cannot go unnoticed."""
        for name, buf in self.named_buffers():
            if not name.endswith("position_ids"):
                raise AssertionError(f"no rule to rebuild the tower buffer {name}")
            buf.copy_(torch.arange(buf.shape[-1], device=buf.device).expand_as(buf))

    @staticmethod
    def _select(key: str) -> bool:
        """Keys worth reading from a checkpoint (a full checkpoint's text/language model is skipped)."""
        return not key.startswith(_FOREIGN_PREFIXES)


class PatchTower(VisionTower):
    """CLIP or SigLIP vision model; features are ``hidden_states[feature_layer]`` (CLIP without CLS)."""

    def __init__(self, kind: str, hf_config: dict, feature_layer: int):
        super().__init__()
        from transformers import CLIPVisionModel, SiglipVisionModel

        config = transformers_config(kind, hf_config)
        if kind == "clip":
            self.vision_model = CLIPVisionModel(config)
        else:
            self.vision_model = SiglipVisionModel(config)
            self.ignored_prefixes = ("vision_model.head.",)
        layers = config.num_hidden_layers
        if not -(layers + 1) <= feature_layer <= layers:
            raise ConfigError("vision.feature_layer", feature_layer,
                              f"a hidden-state index in [{-(layers + 1)}, {layers}] for {layers} layers")
        self.kind = kind
        self.feature_layer = feature_layer
        self.drop_cls = kind == "clip"
        self.hidden_size = config.hidden_size
        self.image_size = config.image_size
        self.num_tokens = _feature_count(kind, config)

    def hf_config(self) -> dict:
        """The transformers vision config values (without bookkeeping keys)."""
        return _clean(self.vision_model.config.to_dict())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` [N, 3, S, S] -> features [N, (S / patch)^2, hidden_size]."""
        out = self.vision_model(pixel_values=pixel_values, output_hidden_states=True)
        features = out.hidden_states[self.feature_layer]
        # a copy, not a view: FSDP2 warns about (and cannot track) views returned by a module's forward
        return features[:, 1:].clone() if self.drop_cls else features


class Blip2Tower(VisionTower):
    """BLIP-2's ViT, learned query tokens and Q-Former; features = Q-Former last hidden state."""

    checkpoint_prefixes = ("vision_model.", "qformer.", "query_tokens")

    def __init__(self, hf_config: dict):
        super().__init__()
        from transformers import Blip2QFormerModel, Blip2VisionModel

        config = transformers_config("blip2", hf_config)
        self.num_query_tokens = config.num_query_tokens
        self.vision_model = Blip2VisionModel(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(config.qformer_config)
        nn.init.normal_(self.query_tokens, std=config.qformer_config.initializer_range)
        self.hidden_size = config.qformer_config.hidden_size
        self.image_size = config.vision_config.image_size
        self.num_tokens = _feature_count("blip2", config)

    def hf_config(self) -> dict:
        """``vision_config``, ``qformer_config`` and ``num_query_tokens`` as a BLIP-2 config holds them."""
        return {"num_query_tokens": self.num_query_tokens,
                "vision_config": _clean(self.vision_model.config.to_dict()),
                "qformer_config": _clean(self.qformer.config.to_dict())}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` [N, 3, S, S] -> Q-Former features [N, num_query_tokens, qformer hidden]."""
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state
        mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=image_embeds, encoder_attention_mask=mask)
        return out.last_hidden_state


def transformers_config(kind: str, hf_config: dict) -> Any:
    """The transformers config object of a ``kind`` tower (CLIP / SigLIP vision config, BLIP-2 config)."""
    from transformers import Blip2Config, CLIPVisionConfig, SiglipVisionConfig

    if kind == "clip":
        return CLIPVisionConfig(**hf_config)
    if kind == "siglip":
        return SiglipVisionConfig(**{**hf_config, "vision_use_head": False})
    return Blip2Config(vision_config=hf_config.get("vision_config", {}),
                       qformer_config=hf_config.get("qformer_config", {}),
                       num_query_tokens=hf_config.get("num_query_tokens", 32))


def _feature_count(kind: str, config: Any) -> int:
    """Feature tokens per image: the patch grid (CLIP, SigLIP) or the Q-Former queries (BLIP-2)."""
    if kind == "blip2":
        return int(config.num_query_tokens)
    return (config.image_size // config.patch_size) ** 2


def tower_feature_count(vision_cfg: VisionConfig) -> int:
    """Feature tokens per image of ``vision_cfg``'s tower, read from its config alone (nothing is built)."""
    if vision_cfg.kind == "none":
        raise ConfigError("vision.kind", "none", "a vision tower (clip, siglip, blip2) to take images")
    return _feature_count(vision_cfg.kind, transformers_config(vision_cfg.kind, tower_hf_config(vision_cfg)))


def build_tower(vision_cfg: VisionConfig) -> Optional[VisionTower]:
    """A randomly initialised tower for ``vision_cfg`` (None for ``kind: none``); weights from
    ``vision.path`` are loaded separately with :meth:`VisionTower.load_pretrained`."""
    if vision_cfg.kind == "none":
        return None
    hf = tower_hf_config(vision_cfg)
    if vision_cfg.kind == "blip2":
        return Blip2Tower(hf)
    return PatchTower(vision_cfg.kind, hf, vision_cfg.feature_layer)


def saved_vision_config(vision_cfg: VisionConfig, tower: Optional[VisionTower]) -> dict[str, Any]:
    """``vision_cfg`` as a dict that needs no checkpoint directory: the tower's resolved transformers
    config in ``hf_config``, resolved image size and normalisation, and no ``path``."""
    from dataclasses import asdict

    values = asdict(vision_cfg)
    if tower is None:
        return values
    settings = resolve_image_settings(vision_cfg)
    values.update(hf_config=tower.hf_config(), path=None, preset=None, image_size=settings.size,
                  image_mean=list(settings.mean), image_std=list(settings.std))
    return values
