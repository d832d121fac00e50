"""Image decoding and transforms: EXIF, colour modes, the three resize modes, normalisation, guards."""

from __future__ import annotations

import io
import struct
import types
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from mmtune.data.images import ImageTransform, load_image, normalize, to_square
from mmtune.errors import ConfigError, DataError
from mmtune.presets import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _stripes(width: int, height: int, colours_and_ends: list[tuple[tuple[int, int, int], int]]
             ) -> Image.Image:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    start = 0
    for colour, end in colours_and_ends:
        array[:, start:end] = colour
        start = end
    return Image.fromarray(array)


def _random(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_honoured(fmt):
    image = _stripes(40, 20, [(RED, 20), (BLUE, 40)])  # red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was rotated: display needs a 90 degree clockwise turn
    loaded = load_image(_bytes(image, fmt, exif=exif.tobytes()))
    assert loaded.size == (20, 40) and loaded.mode == "RGB"
    top, bottom = np.asarray(loaded)[2, 10], np.asarray(loaded)[37, 10]
    assert top[0] > 200 and top[2] < 60, "the left (red) half is on top after a clockwise turn"
    assert bottom[2] > 200 and bottom[0] < 60


def test_rgba_is_composited_on_white():
    array = np.zeros((4, 4, 4), dtype=np.uint8)
    array[:, :2] = (255, 0, 0, 255)  # opaque red
    array[:, 2:] = (0, 0, 255, 0)  # fully transparent
    loaded = np.asarray(load_image(_bytes(Image.fromarray(array, "RGBA"))))
    assert loaded[0, 0].tolist() == [255, 0, 0] and loaded[0, 3].tolist() == [255, 255, 255]


def test_palette_and_grayscale_become_rgb():
    palette = _stripes(4, 4, [(RED, 2), (GREEN, 4)]).convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    loaded = np.asarray(load_image(_bytes(palette)))
    assert loaded.shape == (4, 4, 3)
    assert loaded[0, 0].tolist() == [255, 0, 0] and loaded[0, 3].tolist() == [0, 255, 0]
    gray = np.asarray(load_image(_bytes(Image.new("L", (3, 3), 77))))
    assert gray.shape == (3, 3, 3) and (gray == 77).all()
    transparent_palette = Image.new("P", (2, 2), 0)
    transparent_palette.putpalette([10, 20, 30] * 256)
    transparent_palette.info["transparency"] = 0
    assert np.asarray(load_image(_bytes(transparent_palette)))[0, 0].tolist() == [255, 255, 255]


def test_webp_bytes_and_paths_and_pil_images_load(tmp_path):
    image = Image.new("RGB", (8, 6), BLUE)
    assert load_image(_bytes(image, "WEBP", lossless=True)).size == (8, 6)
    path = tmp_path / "a.png"
    image.save(path)
    assert np.asarray(load_image(str(path)))[0, 0].tolist() == list(BLUE)
    assert load_image(path).size == (8, 6) and load_image(image).size == (8, 6)


def test_center_crop_keeps_the_middle_of_the_long_side():
    image = _stripes(40, 20, [(RED, 10), (GREEN, 30), (BLUE, 40)])
    out = np.asarray(to_square(image, 16, "center_crop", CLIP_MEAN)).astype(int)
    assert out.shape == (16, 16, 3)
    assert (out[:, 2:14, 1] > 240).all() and (out[:, 2:14, 0] < 15).all() and (out[:, 2:14, 2] < 15).all()
    tall = np.asarray(to_square(_stripes(20, 40, [(RED, 20)]), 16, "center_crop", CLIP_MEAN))
    assert tall.shape == (16, 16, 3)


def test_pad_fills_with_the_mean_colour_then_resizes():
    out = np.asarray(to_square(Image.new("RGB", (40, 20), RED), 16, "pad", (0.5, 0.25, 0.0))).astype(int)
    assert out.shape == (16, 16, 3)
    assert out[0, 8].tolist() == [127, 63, 0] and out[15, 8].tolist() == [127, 63, 0]
    assert out[8, 8].tolist() == [255, 0, 0]
    assert (np.abs(out[6:10] - np.array(RED)) <= 2).all()


def test_resize_stretches_to_a_square():
    out = np.asarray(to_square(_stripes(40, 20, [(RED, 20), (BLUE, 40)]), 16, "resize", SIGLIP_MEAN))
    assert out.shape == (16, 16, 3)
    assert out[:, 0].tolist() == [list(RED)] * 16 and out[:, 15].tolist() == [list(BLUE)] * 16


def test_normalisation_values():
    image = Image.new("RGB", (2, 2), (255, 0, 128))
    tensor = normalize(image, (0.5, 0.5, 0.5), (0.5, 0.25, 1.0))
    assert tensor.shape == (3, 2, 2) and tensor.dtype == torch.float32
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([1.0, -2.0, 128 / 255 - 0.5]))


def test_center_crop_transform_equals_the_clip_processor():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image = _random(53, 37)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 24, "width": 24},
                                      image_mean=CLIP_MEAN, image_std=CLIP_STD)
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    got = ImageTransform(24, CLIP_MEAN, CLIP_STD, "center_crop")(_bytes(image))
    assert got.shape == (3, 24, 24)
    assert torch.allclose(got, expected, atol=1e-6)


def test_resize_transform_equals_the_siglip_processor():
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image = _random(45, 30, seed=1)
    processor = SiglipImageProcessorPil(size={"height": 20, "width": 20}, image_mean=SIGLIP_MEAN,
                                        image_std=SIGLIP_STD)
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    got = ImageTransform(20, SIGLIP_MEAN, SIGLIP_STD, "resize")(image)
    assert torch.allclose(got, expected, atol=1e-5)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` but holds almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(DataError, match="12000x12000 = 144000000 pixels, more than the limit of 64000000"):
        load_image(_png_header_only(12000, 12000))
    with pytest.raises(DataError, match="100x100 = 10000 pixels, more than the limit of 5000"):
        ImageTransform(8, CLIP_MEAN, CLIP_STD, max_pixels=5000)(_bytes(Image.new("RGB", (100, 100))))
    with pytest.raises(DataError, match="too large to decode safely"):
        load_image(_png_header_only(20000, 20000), max_pixels=10**12)


@pytest.mark.parametrize("data", [b"definitely not an image", b"",
                                  _bytes(Image.new("RGB", (64, 64)), "JPEG")[:200]])
def test_corrupt_or_truncated_bytes_raise_data_error(data):
    with pytest.raises(DataError, match="cannot decode image"):
        load_image(data)


def test_missing_file_and_unknown_reference_raise(tmp_path):
    with pytest.raises(DataError, match="image file not found"):
        load_image(str(tmp_path / "missing.jpg"))
    with pytest.raises(DataError, match="cannot read an image from a int"):
        load_image(3)  # type: ignore[arg-type]


def test_transform_settings_are_checked_and_built_from_image_settings():
    with pytest.raises(ConfigError, match="vision.resize"):
        ImageTransform(8, CLIP_MEAN, CLIP_STD, "squash")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="vision.image_mean"):
        ImageTransform(8, (0.5, 0.5), CLIP_STD)
    settings = types.SimpleNamespace(size=8, mean=CLIP_MEAN, std=CLIP_STD, resize="pad", max_pixels=100)
    transform = ImageTransform.from_settings(settings)
    assert transform == ImageTransform(8, tuple(CLIP_MEAN), tuple(CLIP_STD), "pad", 100)
    assert transform(Image.new("RGB", (10, 5), RED)).shape == (3, 8, 8)
