"""``mmtune bench data``: inputs written as files and shards, the transformers baseline computes the same
tensors as ours, every side reports a rate."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch

from mmtune import cli
from mmtune.bench.data import expand2square, run_data_bench, transformers_transform, write_inputs
from mmtune.bench.synthetic import synthetic_photos
from mmtune.data.images import ImageTransform
from mmtune.presets import CLIP_MEAN, CLIP_STD


def _transform(resize: str, size: int = 48) -> ImageTransform:
    return ImageTransform(size, tuple(CLIP_MEAN), tuple(CLIP_STD), resize=resize)


def test_inputs_are_the_same_photos_as_files_and_shards(tmp_path):
    photos = synthetic_photos(40, 96, 64, seed=3)
    assert len(set(photos)) == 40 and all(p[:2] == b"\xff\xd8" for p in photos)  # distinct JPEGs
    files, shards = write_inputs(tmp_path, photos)
    assert [f.read_bytes() for f in files] == photos
    assert len(shards) == 2
    with tarfile.open(shards[1]) as tar:
        names = tar.getnames()
        assert names[:2] == ["00032.jpg", "00032.txt"] and len(names) == 16
        assert tar.extractfile("00033.jpg").read() == photos[33]


@pytest.mark.parametrize("resize", ["pad", "center_crop"])
def test_transformers_baseline_computes_the_same_pixels(tmp_path, resize):
    files, _ = write_inputs(tmp_path, synthetic_photos(2, 120, 72, seed=1))
    ours = _transform(resize)(files[0])
    theirs = transformers_transform(_transform(resize))(files[0])
    assert theirs.shape == ours.shape == (3, 48, 48)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_expand2square_centres_the_image_on_the_fill_colour():
    from PIL import Image

    out = expand2square(Image.new("RGB", (4, 2), (255, 0, 0)), (1, 2, 3))
    assert out.size == (4, 4)
    assert out.getpixel((0, 0)) == (1, 2, 3) and out.getpixel((0, 1)) == (255, 0, 0)


def test_every_side_reports_a_rate(tmp_path):
    results = run_data_bench(_transform("pad"), tmp_path, images=4, width=96, height=64, workers=1, repeats=1)
    assert [r.name for r in results] == ["mmtune, files", "mmtune, shards", "mmtune, files, 1 workers (total)",
                                         "transformers, files"]
    assert all(r.images_per_s > 0 for r in results)
    with pytest.raises(ValueError, match="images >= 1"):
        run_data_bench(_transform("pad"), tmp_path, images=0)


def test_bench_data_command(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("vision: {preset: debug-clip}\ndata: {num_workers: 0}\n")
    code = cli.main(["bench", "data", "--config", str(config), "--images", "3", "--size", "80x64",
                     "--repeats", "1", "--json", "--vision.image_size", "40"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["mmtune, files", "mmtune, shards", "transformers, files"]
    assert cli.main(["bench", "data", "--config", str(config), "--size", "big"]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
