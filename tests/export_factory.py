"""What the export tests share: a tiny model initialised by the test, and the check that transformers, on
the export with its own processor and chat template, answers as mmtune's engine does."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mmtune.config import ConnectorConfig, ModelConfig, VisionConfig, build
from mmtune.data.records import Message
from mmtune.inference.engine import Engine
from mmtune.inference.request import ChatRequest
from mmtune.models.io import save_model
from mmtune.models.tokenizer import Tokenizer
from mmtune.models.vlm import VisionLanguageModel

QUESTION = "What is in the picture?"
NEW_TOKENS = 8


def tiny_model_dir(root: Path, tokenizer_dir: Path, vision: str = "debug-clip", resize: str | None = None,
                   connector: str | None = None) -> Path:
    """A saved tiny model (2-layer decoder, the ``vision`` preset tower, a connector: qformer for BLIP-2,
    else mlp, unless ``connector`` says) with fresh weights; ``resize`` overrides the preset's ``vision.resize``."""
    tok = Tokenizer.from_path(tokenizer_dir)
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32000, multiple_of=32, max_seq_len=256)
    vision_cfg = build(VisionConfig, {"preset": vision, **({"resize": resize} if resize else {})}, "vision")
    kind = connector or ("qformer" if vision == "debug-blip2" else "mlp")
    model = VisionLanguageModel(cfg, vision_cfg, ConnectorConfig(kind=kind), tok.image_token_id)
    model.init_weights()
    with torch.no_grad():  # a larger output scale makes greedy choices far from ties
        model.llm.output.weight.mul_(20)
    return save_model(model.eval(), root, tokenizer=tok)


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def same_answer(engine: Engine, hf: Any, processor: Any, image: Image.Image, dtype: torch.dtype = torch.float32
                ) -> list[int]:
    """Asserts that transformers' ``hf`` with its ``processor`` and chat template sees the engine's prompt ids
    and pixels and answers the same greedy tokens (logits within 1e-4 in fp32); returns the tokens."""
    marker = "<image>\n" if engine.processor.image_position == "placeholder" else ""
    prepared = engine.prepare(ChatRequest(messages=[Message("user", marker + QUESTION)], image=png(image),
                                          max_new_tokens=NEW_TOKENS))
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=text, images=image, return_tensors="pt", add_special_tokens=False)
    assert inputs["input_ids"][0].tolist() == prepared.prompt_ids, (text, engine.tokenizer.decode(prepared.prompt_ids))
    assert (inputs["pixel_values"][0] - prepared.pixel_values[0]).abs().max() <= 1e-5
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    expected = engine.run(prepared).token_ids
    with torch.no_grad():
        got = hf.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(prepared.prompt_ids):].tolist()
        if dtype == torch.float32:
            ours = engine.model(torch.tensor([prepared.prompt_ids]), prepared.pixel_values)
            theirs = hf(**inputs).logits[..., :ours.shape[-1]]
            assert (ours - theirs).abs().max() <= 1e-4
    assert got[:len(expected)] == expected and len(expected) > 0
    return expected
