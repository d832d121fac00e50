"""LLaMA2-Accessory's ``llama_qformerv2`` as a transformers model, shipped inside exports made by mmtune.

Load an export with ``trust_remote_code=True``::

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"},
                                          {"type": "text", "text": "What is in the picture?"}]}])
    inputs = processor(text=text, images=image, return_tensors="pt")
    answer = model.generate(**inputs, max_new_tokens=64)

The architecture: BLIP-2's ViT and Q-Former (``vision_model``, ``query_tokens``, ``qformer``) give one
feature per query; ``proj`` (Linear + LayerNorm) maps them to the decoder's width; the learned
``start_img`` and ``end_img`` embeddings enclose them; that run of ``num_query_tokens + 2`` embeddings
sits right after BOS, where the processor puts as many ``<image>`` ids. The decoder is transformers'
Llama (``model``, ``lm_head``). This file imports only torch and transformers.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from transformers import (
    BatchFeature,
    Blip2Config,
    Blip2QFormerModel,
    Blip2VisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    ProcessorMixin,
)


class MMTuneQFormerConfig(LlamaConfig):
    """A Llama config plus the BLIP-2 tower (``blip2_config``: ``vision_config``, ``qformer_config``,
    ``num_query_tokens``) and the image placeholder id."""

    model_type = "mmtune_qformer"
    blip2_config: Optional[dict] = None
    image_token_id: int = 32000


class MMTuneQFormerForCausalLM(LlamaForCausalLM):
    """Llama decoder with the BLIP-2 Q-Former image prefix of ``llama_qformerv2``."""

    config_class = MMTuneQFormerConfig

    def __init__(self, config: MMTuneQFormerConfig):
        super().__init__(config)
        blip = Blip2Config(**(config.blip2_config or {}))
        width = blip.qformer_config.hidden_size
        self.vision_model = Blip2VisionModel(blip.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, blip.num_query_tokens, width))
        self.qformer = Blip2QFormerModel(blip.qformer_config)
        self.proj = nn.Sequential(nn.Linear(width, config.hidden_size), nn.LayerNorm(config.hidden_size))
        self.start_img = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.end_img = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` [N, 3, S, S] -> [N, num_query_tokens + 2, hidden]: start, projected queries, end."""
        pixel_values = pixel_values.to(self.query_tokens.dtype)
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state
        mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        features = self.qformer(query_embeds=queries, encoder_hidden_states=image_embeds,
                                encoder_attention_mask=mask).last_hidden_state
        projected = self.proj(features)
        n = projected.shape[0]
        return torch.cat([self.start_img.expand(n, -1, -1), projected, self.end_img.expand(n, -1, -1)], dim=1)

    def forward(self, input_ids: Optional[torch.Tensor] = None, pixel_values: Optional[torch.Tensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        """Llama's forward, with the image embeddings written over the ``<image>`` positions (text ids are
        looked up with those positions masked to 0, so the placeholder id needs no embedding row)."""
        if inputs_embeds is None:
            is_image = input_ids == self.config.image_token_id
            inputs_embeds = self.model.embed_tokens(input_ids.masked_fill(is_image, 0))
            if pixel_values is not None and bool(is_image.any()):
                images = self.get_image_features(pixel_values).to(inputs_embeds.dtype)
                inputs_embeds = inputs_embeds.masked_scatter(is_image.unsqueeze(-1), images)
        return super().forward(inputs_embeds=inputs_embeds, **kwargs)


class MMTuneQFormerProcessor(ProcessorMixin):
    """Tokenizer + image processor; a prompt with an image gets ``num_image_tokens`` ``<image>`` ids right
    after BOS (one image per prompt)."""

    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, num_image_tokens: int = 34,
                 image_token: str = "<image>", chat_template: Optional[str] = None, **kwargs: Any):
        self.num_image_tokens = num_image_tokens
        self.image_token = image_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def _ids(self, text: str, add_special_tokens: Optional[bool]) -> list[int]:
        bos = self.tokenizer.bos_token
        if add_special_tokens is None:  # a rendered chat template already starts with BOS
            add_special_tokens = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]

    def __call__(self, text: Any = None, images: Any = None, return_tensors: Optional[str] = "pt",
                 add_special_tokens: Optional[bool] = None, **kwargs: Any) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text or [""])
        rows = [self._ids(t, add_special_tokens) for t in texts]
        data: dict[str, Any] = {}
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            if len(images) != len(rows):
                raise ValueError(f"{len(images)} images for {len(rows)} prompts: this model takes one image per prompt")
            data["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
            image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
            start = 1 if self.tokenizer.bos_token_id is not None else 0
            rows = [r[:start] + [image_id] * self.num_image_tokens + r[start:] for r in rows]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        data["input_ids"] = [[pad] * (width - len(r)) + r for r in rows]  # left padding, for generation
        data["attention_mask"] = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
        if return_tensors == "pt":
            data["input_ids"] = torch.tensor(data["input_ids"])
            data["attention_mask"] = torch.tensor(data["attention_mask"])
        return BatchFeature(data=data)

    def batch_decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.decode(*args, **kwargs)
