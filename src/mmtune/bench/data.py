"""Image pipeline benchmark: images/s decoded and transformed per worker, from files and from shards.

The same photo-like JPEGs (:func:`mmtune.bench.synthetic.synthetic_photos`, 640 x 480 by default, the
size of a COCO image) are written as files and as webdataset shards (img2dataset layout). Sides, each
in one process (= one loader worker), timed in turn (pass 1 of every side, then pass 2, ...):

* ``mmtune, files``: :class:`~mmtune.data.images.ImageTransform` on each file path;
* ``mmtune, shards``: :func:`~mmtune.data.sources.shards.read_shard` streams the records, then the same
  transform decodes their image bytes;
* ``transformers, files`` (the baseline, LLaVA-1.5's preprocessing): PIL opens and converts each file,
  ``expand2square`` pads it when ``vision.resize`` is ``pad``, then ``CLIPImageProcessorPil`` resizes,
  crops and normalises it to the same size, mean and std.

With ``data.num_workers`` > 0 one more side runs the file pipeline in that many DataLoader workers (the
loader's default) and reports the total images/s.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mmtune.bench.timing import interleaved_medians
from mmtune.data.images import ImageTransform
from mmtune.data.sources.formats import EntryOptions
from mmtune.data.sources.shards import read_shard

SHARD_SIZE = 32


@dataclass
class DataBenchResult:
    """Throughput of one side."""

    name: str
    images_per_s: float
    workers: int = 1


def write_inputs(folder: Path, photos: list[bytes]) -> tuple[list[Path], list[str]]:
    """Writes ``photos`` as ``folder/images/NNNNN.jpg`` and as tar shards of :data:`SHARD_SIZE` images
    (``{key}.jpg`` + ``{key}.txt``); returns the file paths and the shard paths."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    files = []
    for i, photo in enumerate(photos):
        path = images / f"{i:05d}.jpg"
        path.write_bytes(photo)
        files.append(path)
    shards = []
    for first in range(0, len(photos), SHARD_SIZE):
        shard = folder / f"{first // SHARD_SIZE:05d}.tar"
        with tarfile.open(shard, "w") as tar:
            for i, photo in enumerate(photos[first:first + SHARD_SIZE], start=first):
                for name, data in ((f"{i:05d}.jpg", photo), (f"{i:05d}.txt", b"a photo")):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        shards.append(str(shard))
    return files, shards


def expand2square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """LLaVA-1.5's padding of an image to a square, centred, with the ``fill`` colour."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    out = Image.new(image.mode, (side, side), fill)
    out.paste(image, ((side - width) // 2, (side - height) // 2))
    return out


def transformers_transform(transform: ImageTransform) -> Callable[[Path], torch.Tensor]:
    """LLaVA-1.5's preprocessing of one image file with ``CLIPImageProcessorPil`` at ``transform``'s
    size and normalisation -> ``[3, size, size]``."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": transform.size},
                                      crop_size={"height": transform.size, "width": transform.size},
                                      image_mean=list(transform.mean), image_std=list(transform.std))
    fill = tuple(int(m * 255) for m in transform.mean)

    def run(path: Path) -> torch.Tensor:
        image = Image.open(path).convert("RGB")
        if transform.resize == "pad":
            image = expand2square(image, fill)
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    return run


def _shard_images(shards: list[str], transform: ImageTransform) -> Iterable[torch.Tensor]:
    opts = EntryOptions("bench")
    for shard in shards:
        for record in read_shard(shard, opts):
            yield transform(record.image)


class _Files(Dataset):
    def __init__(self, files: list[Path], transform: ImageTransform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.files[index])


def run_data_bench(transform: ImageTransform, folder: Path, *, images: int = 64, width: int = 640,
                   height: int = 480, workers: int = 0, repeats: int = 3, seed: int = 0) -> list[DataBenchResult]:
    """Every side on the same ``images`` photos written under ``folder`` (see the module docstring)."""
    from mmtune.bench.synthetic import synthetic_photos

    if images < 1 or repeats < 1 or workers < 0:
        raise ValueError(f"need images >= 1, repeats >= 1 and workers >= 0, got {images}, {repeats}, {workers}")
    files, shards = write_inputs(folder, synthetic_photos(images, width, height, seed))
    theirs = transformers_transform(transform)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one loader worker is one single-threaded process
    try:
        return _sides(files, shards, transform, theirs, workers, repeats)
    finally:
        torch.set_num_threads(threads)


def _sides(files: list[Path], shards: list[str], transform: ImageTransform, theirs: Callable[[Path], torch.Tensor],
           workers: int, repeats: int) -> list[DataBenchResult]:
    """Times every side in turn (see :func:`~mmtune.bench.timing.interleaved_medians`)."""
    sides: list[tuple[str, int, Callable[[], object]]] = [
        ("mmtune, files", 1, lambda: [transform(f) for f in files]),
        ("mmtune, shards", 1, lambda: list(_shard_images(shards, transform))),
    ]
    if workers:
        loader = DataLoader(_Files(files, transform), batch_size=None, num_workers=workers, persistent_workers=True)
        sides.append((f"mmtune, files, {workers} workers (total)", workers, lambda: list(loader)))
    sides.append(("transformers, files", 1, lambda: [theirs(f) for f in files]))
    seconds = interleaved_medians([fn for _, _, fn in sides], repeats)
    return [DataBenchResult(name, len(files) / t, n) for (name, n, _), t in zip(sides, seconds)]
