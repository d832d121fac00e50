"""Synthetic benchmark inputs: photo-like JPEGs and an Alpaca + LLaVA-style mixture of encoded samples.

The mixture follows the length spread of the real stage-2 data (in tokens of a LLaMA tokenizer):
LLaVA-Instruct samples are ``N(630, 140)`` tokens including 576 image positions (CLIP ViT-L/336), so
their text is ``N(54, 140)`` tokens (at least 24) split over one to three question/answer turns;
Alpaca-GPT4 samples are log-normal around 280 tokens, clipped to [100, 600], with a prompt of about 70
tokens. ``scale`` shrinks every text length proportionally (a CPU model uses ``max_seq_len / 2048``);
image samples always carry ``num_image_tokens`` placeholder positions, the model's own count.
Supervision is as the templates give it: answers and the closing EOS are targets; BOS, prompts and
image positions are not.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from mmtune.data.encode import EncodedSample

BOS, EOS, FIRST_TEXT_ID = 1, 2, 3


def synthetic_photos(count: int, width: int = 640, height: int = 480, seed: int = 0,
                     quality: int = 90) -> list[bytes]:
    """``count`` JPEG images of ``width`` x ``height`` with smooth colour fields, edges and sensor noise,
    so that they compress (and decode) like photographs rather than flat test patterns."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    photos = []
    for _ in range(count):
        channels = []
        for _ in range(3):
            fx, fy, phase = rng.uniform(0.002, 0.02, 2).tolist() + [rng.uniform(0, 6.3)]
            channels.append(127 + 80 * np.sin(xs * fx + ys * fy + phase))
        image = np.stack(channels, axis=-1)
        for _ in range(6):  # a few hard-edged rectangles
            x0, y0 = rng.integers(0, width - 32), rng.integers(0, height - 32)
            image[y0:y0 + rng.integers(16, height // 2), x0:x0 + rng.integers(16, width // 2)] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 6, image.shape)
        buffer = io.BytesIO()
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
        photos.append(buffer.getvalue())
    return photos


@dataclass(frozen=True)
class MixtureSpec:
    """What :func:`synthetic_mixture` draws."""

    vocab_size: int
    """Text ids are drawn from ``[3, vocab_size)``, never ``image_token_id``."""
    image_token_id: int
    num_image_tokens: int
    """Placeholder positions per image (0: a text-only model, every sample is Alpaca-style)."""
    max_seq_len: int
    """Samples are cut to this many tokens."""
    scale: float = 0.25
    """Factor applied to every text length of the full-size distributions."""
    llava_share: float = 0.7
    """Fraction of LLaVA-style (image) samples; the rest are Alpaca-style text samples."""


def _text_ids(rng: random.Random, n: int, spec: MixtureSpec) -> list[int]:
    out = []
    while len(out) < n:
        token = rng.randrange(FIRST_TEXT_ID, spec.vocab_size)
        if token != spec.image_token_id:
            out.append(token)
    return out


def _turns(rng: random.Random, text_len: int, n_turns: int) -> list[tuple[int, int]]:
    """(prompt, answer) lengths of ``n_turns`` turns sharing ``text_len`` tokens (prompts ~ 30%)."""
    per_turn = max(2, text_len // n_turns)
    turns = []
    for _ in range(n_turns):
        prompt = max(1, round(per_turn * rng.uniform(0.2, 0.4)))
        turns.append((prompt, max(1, per_turn - prompt)))
    return turns


def _sample(rng: random.Random, spec: MixtureSpec, index: int, photos: list[bytes]) -> EncodedSample:
    image = spec.num_image_tokens > 0 and rng.random() < spec.llava_share
    if image:
        text_len = max(24, round(rng.gauss(630 - 576, 140))) * spec.scale
        turns = _turns(rng, max(4, round(text_len)), rng.choice((1, 1, 2, 3)))
    else:
        total = min(600, max(100, rng.lognormvariate(np.log(280), 0.45)))
        prompt = min(total - 20, max(30, rng.gauss(70, 25)))
        turns = [(max(1, round(prompt * spec.scale)), max(1, round((total - prompt) * spec.scale)))]
    ids, mask = [BOS], [False]
    if image:
        ids += [spec.image_token_id] * spec.num_image_tokens
        mask += [False] * spec.num_image_tokens
    for prompt, answer in turns:
        ids += _text_ids(rng, prompt + answer, spec)
        mask += [False] * prompt + [True] * answer
    ids.append(EOS)
    mask.append(True)
    ids, mask = ids[:spec.max_seq_len], mask[:spec.max_seq_len]
    images = (photos[index % len(photos)],) if image else ()
    spans = ((1, 1 + spec.num_image_tokens),) if image else ()
    return EncodedSample(torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.bool), images,
                         spec.num_image_tokens if image else 0, "llava" if image else "alpaca", str(index),
                         len(ids) == spec.max_seq_len and ids[-1] != EOS, spans)


def synthetic_mixture(spec: MixtureSpec, count: int, photos: list[bytes], seed: int = 0) -> list[EncodedSample]:
    """``count`` encoded samples of the mixture (see the module docstring); image samples cycle through
    ``photos`` (JPEG bytes, decoded by the loader like real data)."""
    if spec.num_image_tokens + 8 > spec.max_seq_len:
        raise ValueError(f"max_seq_len {spec.max_seq_len} leaves no room for text next to "
                         f"{spec.num_image_tokens} image positions")
    if spec.num_image_tokens and not photos:
        raise ValueError("image samples need at least one photo")
    rng = random.Random(seed)
    return [_sample(rng, spec, i, photos) for i in range(count)]
