"""mmtune's image modes (``vision.resize``) as transformers image processors, in both directions.

:data:`PROCESSORS` is the one table: for each mode, the transformers image processor that does the same
to an image and the steps its ``preprocessor_config.json`` states. The export writes the table's row
(:func:`image_processor`); the import (:func:`image_settings`) reads a ``preprocessor_config.json``'s
steps and takes the mode whose row has the same :func:`effect` on a non-square image, so every
equivalent way of writing a mode (a square ``size`` with or without a same-size crop, padding before a
shortest-edge or a square resize) is recognised and nothing else is.

- ``center_crop``: short side to S (bicubic), centre crop S x S: ``CLIPImageProcessor`` with
  ``size: {shortest_edge: S}`` and ``crop_size: S x S``.
- ``resize``: stretch to S x S: ``CLIPImageProcessor`` with ``size: {height: S, width: S}``, no crop.
- ``pad``: pad to a square with the normalisation mean (``int(m * 255)`` per channel, the image centred:
  LLaVA-1.5's ``expand2square``), then S x S: ``LlavaImageProcessor`` with ``do_pad``.

Processor steps mmtune's transform does not have (another resampling filter, another rescale factor,
a crop smaller than the resize, a size other than the tower's) are one :class:`CheckpointError` each.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

from mmtune.errors import CheckpointError
from mmtune.formats.reading import read_json

log = logging.getLogger(__name__)

BICUBIC = 3
_KNOWN = ("CLIPImageProcessor", "SiglipImageProcessor", "LlavaImageProcessor")


class Steps(NamedTuple):
    """What a preprocessor_config.json does: resize kind (``shortest_edge`` | ``square``), centre crop, pad."""

    size: str
    crop: bool
    pad: bool


# vision.resize -> (transformers image processor, its steps)
PROCESSORS: dict[str, tuple[str, Steps]] = {
    "center_crop": ("CLIPImageProcessor", Steps("shortest_edge", crop=True, pad=False)),
    "resize": ("CLIPImageProcessor", Steps("square", crop=False, pad=False)),
    "pad": ("LlavaImageProcessor", Steps("shortest_edge", crop=True, pad=True)),
}


def effect(steps: Steps) -> tuple[bool, bool]:
    """What ``steps`` do to a non-square image: (padded to a square, cut by the crop). A crop the size of
    the resize cuts nothing once the image is square (padded, or resized to a square)."""
    return steps.pad, steps.size == "shortest_edge" and steps.crop and not steps.pad


def processor_fields(mode: str, size: int) -> tuple[str, dict[str, Any]]:
    """(class name, constructor values) of the image processor that does ``mode`` at ``size`` pixels."""
    if mode not in PROCESSORS:
        raise CheckpointError(f"vision.resize {mode!r} has no transformers image processor "
                              f"({', '.join(PROCESSORS)} have)")
    name, steps = PROCESSORS[mode]
    square = {"height": size, "width": size}
    fields: dict[str, Any] = {"size": {"shortest_edge": size} if steps.size == "shortest_edge" else square,
                              "do_center_crop": steps.crop, "crop_size": square, "resample": BICUBIC,
                              "do_convert_rgb": True}
    if steps.pad:
        fields["do_pad"] = True
    return name, fields


def image_processor(mode: str, size: int, mean: Any, std: Any) -> Any:
    """transformers' PIL image processor doing ``mode`` at ``size`` with this normalisation."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    name, fields = processor_fields(mode, size)
    cls = {"CLIPImageProcessor": CLIPImageProcessorPil, "LlavaImageProcessor": LlavaImageProcessorPil}[name]
    return cls(image_mean=list(mean), image_std=list(std), **fields)


def _side(value: Any, what: str, path: Path) -> tuple[str, int]:
    """(``shortest_edge`` | ``square``, pixels) of a processor ``size`` / ``crop_size`` value."""
    if isinstance(value, int):
        return "square", value
    if isinstance(value, dict) and "shortest_edge" in value:
        return "shortest_edge", int(value["shortest_edge"])
    if isinstance(value, dict) and value.get("height") is not None and value.get("height") == value.get("width"):
        return "square", int(value["height"])
    raise CheckpointError(f"{path}: {what} {value!r} is not square; mmtune's images are square")


def _refuse(p: dict[str, Any], path: Path) -> None:
    """Processor steps mmtune's image transform does not have."""
    kind = str(p.get("image_processor_type", "CLIPImageProcessor")).removesuffix("Fast").removesuffix("Pil")
    if kind not in _KNOWN:
        raise CheckpointError(f"{path}: image_processor_type {kind!r} is not supported ({', '.join(_KNOWN)})")
    if p.get("do_resize", True) is not True:
        raise CheckpointError(f"{path}: do_resize false is not supported (mmtune always resizes)")
    if p.get("resample", BICUBIC) != BICUBIC:
        raise CheckpointError(f"{path}: resample {p['resample']!r} is not supported (mmtune resizes bicubic, 3)")
    if p.get("do_rescale", True) is not True or abs(float(p.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise CheckpointError(f"{path}: rescaling other than 1/255 (do_rescale, rescale_factor) is not supported")
    if p.get("do_pad") and kind != "LlavaImageProcessor":
        raise CheckpointError(f"{path}: do_pad with {kind} is not supported (only LlavaImageProcessor pads to square)")


def _steps(p: dict[str, Any], path: Path, tower_size: int) -> tuple[Steps, int]:
    """The steps and image size of a preprocessor_config.json (checked: square, the tower's size)."""
    how, size = _side(p.get("size", {"shortest_edge": tower_size}), "size", path)
    crop = bool(p.get("do_center_crop", how == "shortest_edge"))
    cropped = _side(p.get("crop_size", size), "crop_size", path)[1] if crop else size
    if cropped != size:
        raise CheckpointError(f"{path}: resizing to {size} then cropping {cropped} is not supported "
                              "(mmtune crops to the resized short side)")
    if size != tower_size:
        raise CheckpointError(f"{path}: image size {size} differs from the vision tower's image_size {tower_size}")
    steps = Steps(how, crop, bool(p.get("do_pad")))
    if how == "shortest_edge" and not crop and not steps.pad:
        raise CheckpointError(f"{path}: a shortest-edge resize without a centre crop or padding is not square")
    return steps, size


def image_settings(model_dir: str | Path, tower_size: int) -> dict[str, Any]:
    """``VisionConfig`` fields (``image_size``, ``image_mean``, ``image_std``, ``resize``) equal to the
    directory's ``preprocessor_config.json`` (else the ``image_processor`` in ``processor_config.json``);
    empty (the tower's defaults) when there is none. The mode is the :data:`PROCESSORS` row with the same
    :func:`effect`."""
    path, nested = Path(model_dir) / "preprocessor_config.json", Path(model_dir) / "processor_config.json"
    if path.is_file():
        p = read_json(path, "preprocessor_config.json")
    elif nested.is_file() and isinstance(read_json(nested, "processor_config.json").get("image_processor"), dict):
        path, p = nested, read_json(nested, "processor_config.json")["image_processor"]  # as transformers 5 saves it
    else:
        log.warning("%s: no preprocessor_config.json; the tower's default image settings are used", model_dir)
        return {}
    _refuse(p, path)
    steps, size = _steps(p, path, tower_size)
    resize = next(mode for mode, (_, row) in PROCESSORS.items() if effect(row) == effect(steps))
    mean, std = (p.get("image_mean"), p.get("image_std")) if p.get("do_normalize", True) else ([0.0] * 3, [1.0] * 3)
    return {"image_size": size, "resize": resize, "image_mean": mean and list(mean), "image_std": std and list(std)}
