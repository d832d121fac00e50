"""Questions about scenes (colour, count, position, existence, multi-turn follow-ups) and text-only tasks.

Answers are short and closed-vocabulary (a colour, a kind, a position, a number word, yes/no,
"nothing"), so exact match is a fair score. Text-only tasks are Alpaca-style records
(instruction, input, output) over the same small vocabulary.
"""

from __future__ import annotations

import random
from typing import Callable

from mmtune.data.synth.grammar import NUMBERS
from mmtune.data.synth.world import COLOURS, KINDS, POSITIONS, Scene

Turn = tuple[str, str]
"""(question, answer)"""


def _unique(scene: Scene, kind: str) -> bool:
    return sum(s.kind == kind for s in scene.shapes) == 1


def _q_count(scene: Scene, rng: random.Random) -> list[Turn]:
    if rng.random() < 0.5:
        return [("how many shapes are there?", NUMBERS[len(scene.shapes)])]
    colour = rng.choice(sorted(COLOURS))
    n = sum(s.colour == colour for s in scene.shapes)
    return [(f"how many {colour} shapes are there?", NUMBERS[n])]


def _q_cell(scene: Scene, rng: random.Random) -> list[Turn]:
    """What is in a cell, then (if something) a follow-up about its colour."""
    position = rng.choice(POSITIONS)
    shape = scene.at(position)
    turns = [(f"what shape is in the {position}?", shape.kind if shape else "nothing")]
    if shape is not None and rng.random() < 0.7:
        turns.append(("what colour is it?", shape.colour))
    return turns


def _q_colour(scene: Scene, rng: random.Random) -> list[Turn]:
    kinds = [k for k in KINDS if _unique(scene, k)]
    if not kinds:
        return _q_cell(scene, rng)
    kind = rng.choice(kinds)
    shape = next(s for s in scene.shapes if s.kind == kind)
    turns = [(f"what colour is the {kind}?", shape.colour)]
    if rng.random() < 0.5:
        turns.append(("where is it?", shape.position))
    return turns


def _q_exists(scene: Scene, rng: random.Random) -> list[Turn]:
    if rng.random() < 0.5:
        shape = rng.choice(scene.shapes)
        colour, kind = shape.colour, shape.kind
    else:
        colour, kind = rng.choice(sorted(COLOURS)), rng.choice(KINDS)
    matches = [s for s in scene.shapes if s.colour == colour and s.kind == kind]
    turns = [(f"is there a {colour} {kind}?", "yes" if matches else "no")]
    if len(matches) == 1 and rng.random() < 0.7:
        turns.append(("where is it?", matches[0].position))
    return turns


def _q_where(scene: Scene, rng: random.Random) -> list[Turn]:
    shape = rng.choice(scene.shapes)
    same = [s for s in scene.shapes if s.colour == shape.colour and s.kind == shape.kind]
    if len(same) > 1:
        return _q_count(scene, rng)
    return [(f"where is the {shape.colour} {shape.kind}?", shape.position)]


QUESTION_KINDS: dict[str, Callable[[Scene, random.Random], list[Turn]]] = {
    "count": _q_count, "cell": _q_cell, "colour": _q_colour, "exists": _q_exists, "where": _q_where,
}


def questions(scene: Scene, rng: random.Random, max_groups: int = 4) -> list[Turn]:
    """A conversation about ``scene``: 1..max_groups question groups, each with optional follow-ups."""
    turns: list[Turn] = []
    for name in rng.sample(sorted(QUESTION_KINDS), rng.randint(1, max_groups)):
        turns.extend(QUESTION_KINDS[name](scene, rng))
    return turns


# ------------------------------------------------------------------ text-only (Alpaca-style) tasks

_OPPOSITES = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "yes": "no",
              "no": "yes", "big": "small", "small": "big"}
_WORDS = tuple(sorted(COLOURS)) + KINDS


def _t_next(rng: random.Random) -> dict:
    n = rng.randint(0, 9)
    return {"instruction": "what number comes after this one?", "input": NUMBERS[n], "output": NUMBERS[n + 1]}


def _t_previous(rng: random.Random) -> dict:
    n = rng.randint(1, 10)
    return {"instruction": "what number comes before this one?", "input": NUMBERS[n],
            "output": NUMBERS[n - 1]}


def _t_larger(rng: random.Random) -> dict:
    a, b = rng.sample(range(11), 2)
    return {"instruction": "which number is larger?", "input": f"{NUMBERS[a]} or {NUMBERS[b]}",
            "output": NUMBERS[max(a, b)]}


def _t_count(rng: random.Random) -> dict:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(1, 5))]
    return {"instruction": "count the words.", "input": " ".join(words), "output": NUMBERS[len(words)]}


def _t_opposite(rng: random.Random) -> dict:
    word = rng.choice(sorted(_OPPOSITES))
    return {"instruction": f"what is the opposite of {word}?", "input": "", "output": _OPPOSITES[word]}


def _t_repeat(rng: random.Random) -> dict:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(1, 3))]
    return {"instruction": "repeat the words.", "input": " ".join(words), "output": " ".join(words)}


TEXT_TASKS: dict[str, Callable[[random.Random], dict]] = {
    "next": _t_next, "previous": _t_previous, "larger": _t_larger, "count": _t_count,
    "opposite": _t_opposite, "repeat": _t_repeat,
}


def text_task(rng: random.Random) -> dict:
    """One Alpaca-style record {instruction, input, output} drawn from :data:`TEXT_TASKS`."""
    return TEXT_TASKS[rng.choice(sorted(TEXT_TASKS))](rng)
