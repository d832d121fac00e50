"""Tiny datasets written by the data tests: images, img2dataset-style shards, manifests, Alpaca, LLaVA."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from mmtune.config import Config, SourceConfig


def png_bytes(shade: int = 0, size: tuple[int, int] = (20, 16), fmt: str = "PNG") -> bytes:
    """A small solid-colour image, encoded."""
    buf = io.BytesIO()
    Image.new("RGB", size, (shade % 256, 80, 160)).save(buf, format=fmt)
    return buf.getvalue()


def photo(width: int = 53, height: int = 37) -> Image.Image:
    """A non-square RGB image with gradients and noise (a stand-in for a photograph)."""
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([(x * 5.1) % 256, (y * 6.3) % 256, ((x + y) * 2.7) % 256], -1)
    arr = arr + np.random.default_rng(0).integers(-20, 20, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_images(folder: Path, n: int) -> list[str]:
    """``n`` PNG files ``0.png`` ... in ``folder``; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        (folder / f"{i}.png").write_bytes(png_bytes(i * 17))
        names.append(f"{i}.png")
    return names


def write_shard(path: Path, first: int, count: int, *, bad_image_keys: tuple[str, ...] = (),
                no_caption_keys: tuple[str, ...] = ()) -> Path:
    """One shard in img2dataset's layout: samples ``first .. first + count - 1``, captions ``caption {n}``."""
    from webdataset import TarWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with TarWriter(str(path)) as sink:
        for n in range(first, first + count):
            key = f"{n:09d}"
            sample = {"__key__": key, "jpg": png_bytes(n, fmt="JPEG"),
                      "json": json.dumps({"key": key, "status": "success"}).encode()}
            if key in bad_image_keys:
                sample["jpg"] = b"\xff\xd8 not a jpeg"
            if key not in no_caption_keys:
                sample["txt"] = f"caption {n}".encode()
            sink.write(sample)
    return path


def write_shards(folder: Path, shards: int, per_shard: int, *, stats: bool = False, **bad: tuple[str, ...]
                 ) -> list[Path]:
    """Shards ``00000.tar ...`` (:func:`write_shard`) with captions ``caption {n}`` (``n`` counts all samples);
    with ``stats`` each ``{shard}.tar`` gets img2dataset's ``{shard}_stats.json`` beside it."""
    paths = []
    for s in range(shards):
        path = write_shard(folder / f"{s:05d}.tar", s * per_shard, per_shard, **bad)
        if stats:
            write_shard_stats(path, per_shard)
        paths.append(path)
    return paths


def write_shard_stats(shard: Path, successes: int, failed: int = 3) -> Path:
    """img2dataset's per-shard stats file (``logger.write_stats``): ``00012.tar`` -> ``00012_stats.json``."""
    path = shard.with_name(shard.name.removesuffix(".tar") + "_stats.json")
    path.write_text(json.dumps({"count": successes + failed, "successes": successes, "failed_to_download": failed,
                                "failed_to_resize": 0, "duration": 1.5, "start_time": 0.0, "end_time": 1.5,
                                "status_dict": {"success": successes, "404": failed}}, indent=4))
    return path


def write_json(path: Path, items: list) -> Path:
    """``items`` as one JSON list."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items))
    return path


def llava_items(n: int, images: Optional[list[str]] = None, turns: int = 1) -> list[dict]:
    """LLaVA records ``r{i}`` with ``turns`` human/gpt pairs, an image each when ``images`` is given."""
    out = []
    for i in range(n):
        conv = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": f"Thing {i}."}]
        for t in range(1, turns):
            conv += [{"from": "human", "value": f"And {t}?"}, {"from": "gpt", "value": f"Answer {i}.{t}"}]
        item = {"id": f"r{i}", "conversations": conv}
        if images:
            item["image"] = images[i % len(images)]
        else:
            conv[0]["value"] = "What is this?"
        out.append(item)
    return out


def alpaca_items(n: int) -> list[dict]:
    """Alpaca records ``Say {i}`` -> ``{i}``."""
    return [{"instruction": f"Say {i}", "input": "" if i % 2 else "loudly", "output": f"number {i}"}
            for i in range(n)]


def config(sources: list[SourceConfig], *, micro: int = 2, batching: str = "padded", max_seq_len: int = 64,
           template: str = "llava_v1", workers: int = 0, **data: object) -> Config:
    """A Config with these sources and small settings."""
    cfg = Config()
    cfg.data.sources = sources
    cfg.data.template = template
    cfg.data.batching = batching  # type: ignore[assignment]
    cfg.data.max_seq_len = max_seq_len
    cfg.data.num_workers = workers
    for key, value in data.items():
        setattr(cfg.data, key, value)
    cfg.training.micro_batch_size = micro
    return cfg


def caption_loader(cfg: Config, tok, rank: int = 0, world: int = 1):
    """``build_loader`` for ``cfg`` with 4 image tokens in place of ``<image>`` and 16-pixel images."""
    from mmtune.data.images import ImageTransform
    from mmtune.data.loader import build_loader
    from mmtune.data.processor import Processor
    from mmtune.models.vision import ImageSettings

    settings = ImageSettings(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "center_crop", 10_000_000)
    processor = Processor(tok, 4, "placeholder", ImageTransform.from_settings(settings))
    return build_loader(cfg, processor, rank=rank, world_size=world, seed=0)
