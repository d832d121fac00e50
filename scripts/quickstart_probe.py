"""Where a quickstart model's "where is the ...?" answers go wrong: a cell probe and a split by row.

    python scripts/quickstart_probe.py RUN_DIR [--stage stage1|stage2] [--train-images 1500] [--where]

RUN_DIR is a ``mmtune quickstart --out`` folder. For every shape of an image, the mean of the connector's
output at the shape's cell (the 2 x 2 image tokens over it, of the 4 x 4 a 32 px image gives) is one
example; its label is the cell. A softmax-regression probe is fitted on the first stage-2 training images
and scored on the held-out images. High accuracy: the cell can be read off the image tokens by one
linear map (what a decoder head answering "where is the ...?" needs); low: it cannot.

``--where`` also answers the held-out "where is the ...?" questions with the stage-2 model and splits
the accuracy by whether the asked-about shape shares its row with another shape (then the row alone
does not tell which shape was meant).
The mlp connector only (its image tokens form the image's grid; the Q-Former's queries do not).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Sequence

import torch

from mmtune.data.synth.world import POSITIONS, sample_scenes

Example = tuple[Path, Sequence[Sequence[str]]]
"""(image file, [(kind, colour, position), ...])"""


def cell_features(grid: torch.Tensor, position: str) -> torch.Tensor:
    """The mean feature of the image tokens over ``position``'s cell; ``grid`` is [side, side, dim]."""
    half = grid.shape[0] // 2
    row, col = divmod(POSITIONS.index(position), 2)
    return grid[row * half:(row + 1) * half, col * half:(col + 1) * half].reshape(-1, grid.shape[-1]).mean(0)


def examples(encode: Callable[[Path], torch.Tensor], images: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, dim], cells [N]) of every shape; ``encode`` maps an image file to [tokens, dim]."""
    xs, ys = [], []
    for path, shapes in images:
        tokens = encode(path)
        side = int(tokens.shape[0] ** 0.5)
        if side * side != tokens.shape[0] or side % 2:
            raise ValueError(f"{tokens.shape[0]} image tokens do not form an even square grid")
        grid = tokens.view(side, side, -1)
        for _, _, position in shapes:
            xs.append(cell_features(grid, position))
            ys.append(POSITIONS.index(position))
    return torch.stack(xs), torch.tensor(ys)


def probe_accuracy(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                   steps: int = 300) -> tuple[float, float]:
    """(train, test) accuracy of a softmax regression fitted on standardised ``train`` features."""
    (xtr, ytr), (xte, yte) = train, test
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    weight = torch.zeros(xtr.shape[1], len(POSITIONS), requires_grad=True)
    bias = torch.zeros(len(POSITIONS), requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ weight + bias, ytr) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return tuple(((x @ weight + bias).argmax(1) == y).float().mean().item()  # type: ignore[return-value]
                     for x, y in ((xtr, ytr), (xte, yte)))


def where_by_row(items: Sequence[tuple[str, str, Sequence[Sequence[str]]]]) -> dict[str, list[int]]:
    """{"shared row" | "alone in its row": [right, asked]} over (question, answer, scene) triples of
    "where is the ...?" questions; ``scene`` is [(kind, colour, position), ...]."""
    out: dict[str, list[int]] = {"shared row": [0, 0], "alone in its row": [0, 0]}
    for question, answer, scene in items:
        colour, kind = question.removeprefix("where is the ").rstrip("?").split()
        target = next(pos for k, c, pos in scene if (k, c) == (kind, colour))
        crowded = sum(pos.split()[0] == target.split()[0] for _, _, pos in scene) > 1
        tally = out["shared row" if crowded else "alone in its row"]
        tally[0] += answer.strip() == target
        tally[1] += 1
    return out


def _where_items(run_dir: Path, held: Sequence[Example]) -> list[tuple[str, str, Sequence[Sequence[str]]]]:
    """The stage-2 model's answers to the held-out "where is the ...?" questions, with their scenes."""
    from mmtune.evaluation.runner import Predictor, load_items

    scenes = {path.name: shapes for path, shapes in held}
    asked = [(i, i.record.messages[-1].content.split("\n")[-1])
             for i in load_items(str(run_dir / "world" / "heldout" / "vqa.json"), "vqa")]
    asked = [(i, question) for i, question in asked if question.startswith("where is the ")]
    Predictor.from_dir(str(run_dir / "stage2"), "llava_v1", system_prompt="").predict([i for i, _ in asked],
                                                                                       desc="where")
    return [(question, i.prediction, scenes[Path(str(i.record.image)).name]) for i, question in asked]


def world_examples(world: Path, train_images: int) -> tuple[list[Example], list[Example]]:
    """(the first stage-2 training images, the held-out images) of a written world, with their shapes."""
    from mmtune.evaluation.runner import load_items

    seed = json.loads((world / "world.json").read_text())["seed"]
    records = json.loads((world / "stage2" / "llava.json").read_text())[:train_images]
    scenes = sample_scenes(seed * 4 + 2, len(records), held_out=False)  # the writer's draw of stage-2 scenes
    train = [(world / "images" / r["image"], [s.fact for s in scene.shapes]) for r, scene in zip(records, scenes)]
    held = load_items(str(world / "heldout" / "captions.jsonl"), "caption")
    return train, [(Path(str(i.record.image)), i.scene) for i in held]


def main() -> int:
    from mmtune.inference.engine import Engine

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--stage", choices=("stage1", "stage2"), default="stage2")
    p.add_argument("--train-images", type=int, default=1500)
    p.add_argument("--where", action="store_true", help="also split 'where is the ...?' accuracy by row")
    args = p.parse_args()
    engine = Engine.from_dir(args.run_dir / args.stage)

    @torch.no_grad()
    def encode(path: Path) -> torch.Tensor:
        pixels = engine.processor.image_transform(path.read_bytes()).unsqueeze(0)
        return engine.model.encode_images(pixels)[0]

    train, test = world_examples(args.run_dir / "world", args.train_images)
    fit, held = probe_accuracy(examples(encode, train), examples(encode, test))
    result = {"model": str(args.run_dir / args.stage), "probe_train": round(fit, 3), "probe_heldout": round(held, 3)}
    if args.where:
        result["where_right_asked"] = where_by_row(_where_items(args.run_dir, test))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
