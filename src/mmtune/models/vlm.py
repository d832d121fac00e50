"""``VisionLanguageModel``: vision tower -> connector -> placeholder positions -> LLaMA-family decoder.

Images enter the sequence through placeholder ids: every image owns ``num_image_tokens`` consecutive
positions holding ``image_token_id`` (see the batch contract in ``docs/architecture.md``). The text is
embedded with those ids masked to 0, so an ``image_token_id`` outside the decoder's vocabulary is never
looked up, and the image embeddings are written over them with one ``masked_scatter`` (row-major, in the
order of ``pixel_values``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from mmtune.config import Config, ConnectorConfig, ModelConfig, TrainableConfig, VisionConfig
from mmtune.models.connectors import build_connector, connector_tokens
from mmtune.models.llama import KVCache, Transformer
from mmtune.models.vision import build_tower, tower_feature_count

PARTS = ("vision", "connector", "llm")


def _is_frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


class VisionLanguageModel(nn.Module):
    """A decoder (``llm``) with an optional vision tower (``vision``) and connector (``connector``)."""

    def __init__(self, model_cfg: ModelConfig, vision_cfg: VisionConfig, connector_cfg: ConnectorConfig,
                 image_token_id: int):
        super().__init__()
        self.model_cfg, self.vision_cfg, self.connector_cfg = model_cfg, vision_cfg, connector_cfg
        self.image_token_id = int(image_token_id)
        self.llm = Transformer(model_cfg)
        self.vision = build_tower(vision_cfg)
        self.connector: Optional[nn.Module] = None
        self.num_image_tokens = 0
        if self.vision is not None:
            self.connector = build_connector(connector_cfg, vision_cfg.kind, self.vision.hidden_size, model_cfg.dim,
                                             self.vision.num_tokens)
            self.num_image_tokens = connector_tokens(connector_cfg, vision_cfg.kind, self.vision.num_tokens)
        self.frozen_parts: frozenset[str] = frozenset()

    @torch.no_grad()
    def init_weights(self, seed: int = 0) -> None:
        """Fresh weights for every unit (:mod:`mmtune.models.init`) from ``seed``; a model materialised
        shard by shard with the same seed holds the same values."""
        from mmtune.models.init import fresh_unit, init_units

        params = self.state_dict(keep_vars=True)
        for unit in init_units(self):
            for key, value in fresh_unit(self, unit, seed).items():
                params[key].copy_(value)
        self.init_buffers()

    @torch.no_grad()
    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """Rebuilds the non-persistent buffers (RoPE tables, the tower's position ids), e.g. after a
        meta-device build and ``to_empty``."""
        self.llm.init_buffers(device)
        if self.vision is not None:
            self.vision.init_buffers()

    def set_trainable(self, trainable: TrainableConfig) -> None:
        """Sets ``requires_grad`` per part (``frozen`` / ``full``); frozen parts go to eval mode and stay
        there through later ``train()`` calls (no dropout in a frozen Q-Former)."""
        frozen = set()
        for name in PARTS:
            module = getattr(self, name)
            if module is None:
                continue
            train = getattr(trainable, name) == "full"
            module.requires_grad_(train)
            if not train:
                frozen.add(name)
        self.frozen_parts = frozenset(frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> "VisionLanguageModel":
        """Like ``nn.Module.train`` but frozen parts always stay in eval mode."""
        super().train(mode)
        for name in self.frozen_parts:
            getattr(self, name).eval()
        return self

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` [N, 3, H, W] -> image embeddings [N, num_image_tokens, dim].

        A frozen tower runs without building a graph.
        """
        assert self.vision is not None and self.connector is not None
        weight = next(self.vision.parameters())
        pixel_values = pixel_values.to(device=weight.device, dtype=weight.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not _is_frozen(self.vision)):
            features = self.vision(pixel_values)
        return self.connector(features)

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token embeddings [B, T, dim] with the image embeddings scattered over the placeholder ids.

        Raises ``ValueError`` when the number of placeholder positions is not ``N_img * num_image_tokens``.
        A batch without images never runs the tower.
        """
        is_image = input_ids == self.image_token_id
        n_positions = int(is_image.sum())
        n_images = 0 if pixel_values is None else int(pixel_values.shape[0])
        if n_images and self.vision is None:
            raise ValueError(f"this model has no vision tower but the batch holds {n_images} images")
        expected = n_images * self.num_image_tokens
        if n_positions != expected:
            raise ValueError(f"the batch has {n_positions} image placeholder positions (id {self.image_token_id}) "
                             f"but {n_images} images x {self.num_image_tokens} tokens = {expected}")
        embeds = self.llm.tok_embeddings(input_ids.masked_fill(is_image, 0))
        if n_images == 0:
            return embeds
        images = self.encode_images(pixel_values).to(embeds.dtype)
        return embeds.masked_scatter(is_image.unsqueeze(-1), images)

    def forward(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None, *,
                positions: Optional[torch.Tensor] = None, sample_ids: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None, return_hidden: bool = False) -> torch.Tensor:
        """Logits [B, T, vocab] (or final hidden states [B, T, dim] with ``return_hidden``) for a batch in
        the ``docs/architecture.md`` layout; ``positions``/``sample_ids``/``cache`` go to the decoder."""
        embeds = self.embed_inputs(input_ids, pixel_values)
        return self.llm(embeds=embeds, positions=positions, sample_ids=sample_ids, cache=cache,
                        return_hidden=return_hidden)


def image_tokens_per_image(vision_cfg: VisionConfig, connector_cfg: ConnectorConfig) -> int:
    """``VisionLanguageModel.num_image_tokens`` of these sections, from the configs alone (no module is
    built): 0 for a text-only model; ConfigError for a connector that does not fit the tower."""
    if vision_cfg.kind == "none":
        return 0
    return connector_tokens(connector_cfg, vision_cfg.kind, tower_feature_count(vision_cfg))


def build_model(cfg: Config, image_token_id: int, device: torch.device | str | None = None) -> VisionLanguageModel:
    """The model of ``cfg`` on ``device``, ready to train: fresh decoder and connector weights, tower
    weights from ``vision.path`` when set, and ``cfg.trainable`` applied.

    On the meta device nothing is initialised or loaded (the caller materialises and loads later).
    """
    device = torch.device(device or "cpu")
    with device:
        model = VisionLanguageModel(cfg.model, cfg.vision, cfg.connector, image_token_id)
    if device.type != "meta":
        model.init_weights(cfg.training.seed)
        if cfg.vision.path and model.vision is not None:
            model.vision.load_pretrained(cfg.vision.path)
    model.set_trainable(cfg.trainable)
    return model
