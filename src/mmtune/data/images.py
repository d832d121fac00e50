"""Image decoding and the transform to a normalised square tensor (PIL + torch, no torchvision).

Public API:

* :func:`load_image` ``(ref, max_pixels) -> PIL.Image`` (RGB): decodes JPEG/PNG/WebP/... bytes, a path
  (local, or a URL read like remote shards: :func:`~mmtune.data.sources.paths.open_binary`), or a PIL
  image; honours the EXIF orientation; converts palette, alpha (composited on white), grayscale and
  CMYK images to RGB; refuses images with more than ``max_pixels`` pixels *before* decoding
  them (decompression-bomb guard). Unreadable data raises :class:`~mmtune.errors.DataError`.
* :func:`to_square` ``(image, size, mode, mean) -> PIL.Image``: ``center_crop`` (short side to
  ``size``, then a centred crop), ``pad`` (pad to a square with the mean colour, then resize; LLaVA's
  ``expand2square``) or ``resize`` (stretch); bicubic throughout.
* :func:`normalize` ``(image, mean, std) -> Tensor[3, H, W]`` float32.
* :class:`ImageTransform` ``(size, mean, std, resize="center_crop", max_pixels=64_000_000)``: the three
  steps as one callable ``transform(ref) -> Tensor[3, size, size]``; ``ImageTransform.from_settings``
  takes :class:`mmtune.models.vision.ImageSettings`, ``ImageTransform.from_vision`` a ``vision`` config section.
* :class:`LocatedImage` ``(ref, source, location)``: an image reference that remembers where it came
  from, so a decoding failure inside a loader worker can be reported with its file, line or key.
* :func:`decode_row_images` ``(row, transform, image_token_id, stats) -> Row``: decodes a row's images; a
  sample whose image fails is blanked out of the row (:func:`blank_sample`: its positions become padding,
  never supervised nor attended) and counted as bad, so rows keep their shape and every rank keeps the
  same number of rows.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mmtune.data.badrecords import BadRecord
from mmtune.data.encode import IGNORE_INDEX
from mmtune.data.packing import Row
from mmtune.data.records import ImageRef
from mmtune.data.sources.paths import is_remote, open_binary
from mmtune.data.stats import DataStats
from mmtune.errors import ConfigError, DataError

if TYPE_CHECKING:
    from mmtune.config import VisionConfig

ResizeMode = Literal["center_crop", "pad", "resize"]
RESIZE_MODES: tuple[str, ...] = ("center_crop", "pad", "resize")


def _describe(ref: ImageRef) -> str:
    if isinstance(ref, (str, Path)):
        return str(ref)
    if isinstance(ref, (bytes, bytearray)):
        return f"<{len(ref)} bytes>"
    return f"<{type(ref).__name__}>"


def _open(ref: ImageRef) -> Image.Image:
    if isinstance(ref, Image.Image):
        return ref
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(ref)))
    if isinstance(ref, str) and is_remote(ref):
        with open_binary(ref) as stream:
            return Image.open(io.BytesIO(stream.read()))
    if isinstance(ref, (str, Path)):
        if not Path(ref).is_file():
            raise DataError(f"image file not found: {ref}")
        return Image.open(ref)
    raise DataError(f"cannot read an image from a {type(ref).__name__}")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode in ("RGB", "L") and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def load_image(ref: ImageRef, max_pixels: int = 64_000_000) -> Image.Image:
    """Decodes ``ref`` to an upright RGB image, refusing more than ``max_pixels`` pixels."""
    what = _describe(ref)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open(ref)
            width, height = image.size
            if width * height > max_pixels:
                raise DataError(f"image {what} has {width}x{height} = {width * height} pixels, "
                                f"more than the limit of {max_pixels}")
            image.load()
            image = ImageOps.exif_transpose(image)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {what} is too large to decode safely: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"cannot decode image {what}: {exc}") from None
    return _to_rgb(image)


def to_square(image: Image.Image, size: int, mode: ResizeMode, mean: Sequence[float]) -> Image.Image:
    """Makes ``image`` a ``size`` x ``size`` square the way ``mode`` says (see the module docstring)."""
    width, height = image.size
    if mode == "resize":
        return image.resize((size, size), Image.Resampling.BICUBIC)
    if mode == "pad":
        side = max(width, height)
        if width != height:
            fill = tuple(int(m * 255) for m in mean)
            canvas = Image.new("RGB", (side, side), fill)
            canvas.paste(image, ((side - width) // 2, (side - height) // 2))
            image = canvas
        return image.resize((size, size), Image.Resampling.BICUBIC)
    if mode == "center_crop":
        short, long = min(width, height), max(width, height)
        scaled_long = int(size * long / short)
        new = (size, scaled_long) if width <= height else (scaled_long, size)
        image = image.resize(new, Image.Resampling.BICUBIC)
        left = int(round((new[0] - size) / 2.0))
        top = int(round((new[1] - size) / 2.0))
        return image.crop((left, top, left + size, top + size))
    raise ConfigError("vision.resize", mode, "one of " + ", ".join(RESIZE_MODES))


def normalize(image: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(pixel / 255 - mean) / std`` as a float32 ``[3, H, W]`` tensor."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return ((tensor - mean_t) / std_t).contiguous()


@dataclass(frozen=True)
class ImageTransform:
    """Decode + square + normalise: ``transform(ref) -> Tensor[3, size, size]``."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: ResizeMode = "center_crop"
    max_pixels: int = 64_000_000

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ConfigError("vision.image_size", self.size, "a positive integer")
        if self.resize not in RESIZE_MODES:
            raise ConfigError("vision.resize", self.resize, "one of " + ", ".join(RESIZE_MODES))
        for name in ("mean", "std"):
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"vision.image_{name}", getattr(self, name), "three numbers (R, G, B)")
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if any(s <= 0 for s in self.std):
            raise ConfigError("vision.image_std", self.std, "three positive numbers")

    @classmethod
    def from_settings(cls, settings: Any) -> "ImageTransform":
        """From :class:`mmtune.models.vision.ImageSettings` (``size, mean, std, resize, max_pixels``)."""
        return cls(size=settings.size, mean=tuple(settings.mean), std=tuple(settings.std),
                   resize=settings.resize, max_pixels=settings.max_pixels)

    @classmethod
    def from_vision(cls, vision: "VisionConfig") -> "ImageTransform":
        """The transform of a ``vision`` config section: its size, normalisation and resize mode, else the
        tower's (see :func:`mmtune.models.vision.resolve_image_settings`)."""
        from mmtune.models.vision import resolve_image_settings

        return cls.from_settings(resolve_image_settings(vision))

    def __call__(self, ref: ImageRef) -> torch.Tensor:
        """Loads and transforms one image reference."""
        image = load_image(ref, self.max_pixels)
        return normalize(to_square(image, self.size, self.resize, self.mean), self.mean, self.std)


@dataclass(frozen=True)
class LocatedImage:
    """An image reference plus the source and location it was read from."""

    ref: Any
    source: str
    location: str


def blank_sample(row: Row, sample: int) -> Row:
    """``row`` with sample number ``sample`` turned into padding (no target, no attention, no image)."""
    keep = row.sample_ids != sample
    pad = torch.full_like(row.input_ids, row.pad_id)
    return dataclasses.replace(
        row, input_ids=torch.where(keep, row.input_ids, pad),
        labels=torch.where(keep, row.labels, torch.full_like(row.labels, IGNORE_INDEX)),
        positions=torch.where(keep, row.positions, torch.zeros_like(row.positions)),
        sample_ids=torch.where(keep, row.sample_ids, torch.full_like(row.sample_ids, -1)),
        num_samples=row.num_samples - 1)


def decode_row_images(row: Row, transform: Callable[[Any], torch.Tensor], image_token_id: int,
                      stats: DataStats) -> Row:
    """Decodes the row's images into tensors; blanks out (and counts) the samples whose image fails."""
    if not row.images:
        return row
    owners = torch.unique(row.sample_ids[row.input_ids == image_token_id]).tolist()
    assert len(owners) == len(row.images), f"{len(row.images)} images but {len(owners)} samples hold image ids"
    decoded, failed = [], []
    for owner, item in zip(owners, row.images):
        ref = item.ref if isinstance(item, LocatedImage) else item
        try:
            decoded.append(transform(ref))
        except DataError as exc:
            where = (item.source, item.location) if isinstance(item, LocatedImage) else ("", "")
            stats.add_bad(BadRecord(where[0], where[1], str(exc)), read=False)
            failed.append(owner)
    for owner in failed:
        row = blank_sample(row, owner)
    keys = tuple(k for i, k in enumerate(row.keys) if i not in failed)
    return dataclasses.replace(row, images=tuple(decoded), keys=keys)
