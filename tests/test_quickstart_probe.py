"""scripts/quickstart_probe.py: the cell probe reads a cell off features that carry it, and not off noise."""

import importlib.util
import zlib
from pathlib import Path

import torch

from mmtune.data.synth.world import POSITIONS

_SPEC = importlib.util.spec_from_file_location("quickstart_probe",
                                               Path(__file__).parents[1] / "scripts" / "quickstart_probe.py")
probe = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(probe)


def _images(count: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(Path(f"img{i}"), [("circle", "red", POSITIONS[int(torch.randint(4, (1,), generator=g))])])
            for i in range(count)]


def _encoder(carries_cell: bool):
    """A stand-in tower: 16 tokens of 8 features; token features name its cell when ``carries_cell``."""
    def encode(path: Path) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(str(path).encode()))
        tokens = torch.randn(4, 4, 8, generator=g)
        if carries_cell:
            for row in range(4):
                for col in range(4):
                    tokens[row, col, (row // 2) * 2 + col // 2] += 3.0
        return tokens.view(16, 8)
    return encode


def test_cell_features_average_the_cells_tokens():
    grid = torch.arange(16.0).view(4, 4, 1)
    assert probe.cell_features(grid, "top left").item() == (0 + 1 + 4 + 5) / 4
    assert probe.cell_features(grid, "bottom right").item() == (10 + 11 + 14 + 15) / 4


def test_probe_reads_cells_that_are_there_and_not_noise():
    train, test = _images(300, 0), _images(100, 1)
    _, held = probe.probe_accuracy(probe.examples(_encoder(True), train), probe.examples(_encoder(True), test))
    _, chance = probe.probe_accuracy(probe.examples(_encoder(False), train), probe.examples(_encoder(False), test))
    assert held > 0.98
    assert chance < 0.5


def test_tokens_that_are_not_a_grid_are_refused():
    import pytest

    with pytest.raises(ValueError, match="32 image tokens do not form an even square grid"):
        probe.examples(lambda path: torch.zeros(32, 8), _images(1, 0))


def test_where_by_row_splits_by_a_second_shape_in_the_row():
    scene = [("circle", "red", "top left"), ("square", "blue", "top right"), ("circle", "blue", "bottom left")]
    items = [("where is the red circle?", "top left", scene),         # shares the top row: right
             ("where is the blue square?", "top left", scene),        # shares the top row: wrong column
             ("where is the blue circle?", "bottom left ", scene)]    # alone in the bottom row: right
    assert probe.where_by_row(items) == {"shared row": [1, 2], "alone in its row": [1, 1]}
