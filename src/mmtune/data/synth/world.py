"""The synthetic image world: scenes of a few coloured shapes on a 2x2 grid, rendered with PIL.

A :class:`Scene` holds up to one :class:`Shape` per grid cell. Each shape has a kind, a colour and a
position (the cell); its size and exact placement inside the cell vary but are not part of what
captions state. Everything is drawn from a ``random.Random`` so a seed fixes the whole world.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from PIL import Image, ImageDraw

KINDS: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
}
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
MAX_SHAPES = 3


@dataclass(frozen=True, order=True)
class Shape:
    """One shape: what captions state about it (kind, colour, position) plus its drawn geometry."""

    position: str
    kind: str
    colour: str
    scale: float = 0.8
    """Size as a fraction of the largest shape that fits in its cell."""
    dx: float = 0.0
    """Horizontal offset of the centre within the room the cell leaves, in [-1, 1]."""
    dy: float = 0.0
    """Vertical offset of the centre within the room the cell leaves, in [-1, 1]."""

    @property
    def fact(self) -> tuple[str, str, str]:
        """(kind, colour, position): what a correct caption says about this shape."""
        return (self.kind, self.colour, self.position)


@dataclass(frozen=True)
class Scene:
    """Shapes in distinct cells, sorted in reading order (top left, top right, bottom left, bottom right)."""

    shapes: tuple[Shape, ...]
    background: tuple[int, int, int] = (30, 30, 30)

    @property
    def facts(self) -> frozenset[tuple[str, str, str]]:
        """The set of (kind, colour, position) triples a caption must state, no more and no less."""
        return frozenset(s.fact for s in self.shapes)

    def at(self, position: str) -> Shape | None:
        """The shape in a cell, or None when the cell is empty."""
        return next((s for s in self.shapes if s.position == position), None)


def sample_scene(rng: random.Random) -> Scene:
    """Draws a scene of 1..MAX_SHAPES shapes in distinct cells."""
    count = rng.randint(1, MAX_SHAPES)
    cells = sorted(rng.sample(range(len(POSITIONS)), count))
    shapes = tuple(
        Shape(position=POSITIONS[c], kind=rng.choice(KINDS), colour=rng.choice(sorted(COLOURS)),
              scale=rng.uniform(0.85, 1.0), dx=rng.uniform(-0.3, 0.3), dy=rng.uniform(-0.3, 0.3))
        for c in cells)
    grey = rng.randint(15, 60)
    return Scene(shapes=shapes, background=(grey, grey, grey))


def scene_key(scene: Scene) -> tuple[tuple[str, str, str], ...]:
    """What makes two scenes 'the same' for held-out splitting: their sorted facts."""
    return tuple(sorted(scene.facts))


def render(scene: Scene, size: int = 32) -> Image.Image:
    """Draws a scene as an RGB image of ``size`` x ``size`` pixels."""
    image = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(image)
    cell = size / 2
    for shape in scene.shapes:
        row, col = divmod(POSITIONS.index(shape.position), 2)
        half = cell * 0.45 * shape.scale
        room = cell / 2 - half - cell * 0.04
        cx = col * cell + cell / 2 + shape.dx * max(room, 0.0)
        cy = row * cell + cell / 2 + shape.dy * max(room, 0.0)
        colour = COLOURS[shape.colour]
        box = (cx - half, cy - half, cx + half, cy + half)
        if shape.kind == "circle":
            draw.ellipse(box, fill=colour)
        elif shape.kind == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=colour)
    return image


def is_held_out(scene: Scene, held_out_fraction: float = 0.1) -> bool:
    """Whether a scene's facts fall in the held-out part of the world (a fixed hash partition).

    The split is by content, not by draw: a held-out combination of shapes never appears in training,
    whatever the seed or the number of images.
    """
    digest = zlib.crc32(repr(scene_key(scene)).encode())
    return digest % 1000 < held_out_fraction * 1000


def sample_scenes(seed: int, count: int, held_out: bool, held_out_fraction: float = 0.1) -> list[Scene]:
    """``count`` scenes from ``seed``, all from the training part or all from the held-out part."""
    rng = random.Random(seed)
    out: list[Scene] = []
    while len(out) < count:
        scene = sample_scene(rng)
        if is_held_out(scene, held_out_fraction) == held_out:
            out.append(scene)
    return out
