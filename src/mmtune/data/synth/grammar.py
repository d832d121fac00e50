"""The world's language: caption phrasings and the parser that reads any of them back.

Every caption states, for each shape, its kind, colour and position, in one of :data:`PHRASINGS`;
some phrasings also state the number of shapes. :func:`parse_caption` reads a caption (whatever the
phrasing, casing or spacing around punctuation) back into those facts, so a generated caption can be
checked against its image: :func:`caption_correct`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from mmtune.data.synth.world import COLOURS, KINDS, Scene, Shape

NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                            "nine", "ten")
CAPTION_PROMPTS: tuple[str, ...] = ("describe the image.", "what is in the picture?",
                                    "write a short caption.", "what do you see?")
CAPTION_PREFIX = "there is"
"""A prefix every stage-1 caption distribution can continue (shown as a prefix-prompted caption)."""


def _listing(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _obj(s: Shape) -> str:
    return f"a {s.colour} {s.kind}"


def _count(n: int) -> str:
    return f"{NUMBERS[n]} shape{'s' if n != 1 else ''}"


PHRASINGS: dict[str, Callable[[Scene], str]] = {
    "list": lambda sc: _listing([f"{_obj(s)} in the {s.position}" for s in sc.shapes]) + ".",
    "there_is": lambda sc: " ".join(f"there is {_obj(s)} in the {s.position}." for s in sc.shapes),
    "position_first": lambda sc: ", ".join(f"in the {s.position} there is {_obj(s)}"
                                           for s in sc.shapes) + ".",
    "counted": lambda sc: f"{_count(len(sc.shapes))}: "
                          + _listing([f"{_obj(s)} at the {s.position}" for s in sc.shapes]) + ".",
    "shows": lambda sc: "the image shows "
                        + _listing([f"{_obj(s)} in the {s.position}" for s in sc.shapes]) + ".",
    "terse": lambda sc: "; ".join(f"{s.position}: {s.colour} {s.kind}" for s in sc.shapes) + ".",
}


def caption(scene: Scene, phrasing: str) -> str:
    """The caption of ``scene`` in one of :data:`PHRASINGS`."""
    return PHRASINGS[phrasing](scene)


@dataclass(frozen=True)
class ParsedCaption:
    """What a caption states: shape facts (kind, colour, position) and, if given, the shape count."""

    facts: tuple[tuple[str, str, str], ...]
    count: Optional[int] = None


_VERTICAL = ("top", "bottom")
_HORIZONTAL = ("left", "right")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+|[.,;:!?]", text.lower())


def _clauses(words: list[str]) -> list[list[str]]:
    clauses, current = [], []
    for w in words:
        if w in (".", ",", ";", "!", "?", "and"):
            clauses.append(current)
            current = []
        else:
            current.append(w)
    return [c for c in clauses + [current] if c]


def _clause_facts(words: list[str]) -> tuple[Optional[tuple[str, str, str]], Optional[int], bool]:
    """(fact or None, count or None, ok) for one clause; ok is False for a half-stated shape."""
    count = None
    for a, b in zip(words, words[1:]):
        if a in NUMBERS and b in ("shape", "shapes"):
            count = NUMBERS.index(a)
    kinds = [w for w in words if w in KINDS]
    colours = [w for w in words if w in COLOURS]
    vertical = [w for w in words if w in _VERTICAL]
    horizontal = [w for w in words if w in _HORIZONTAL]
    mentioned = [kinds, colours, vertical, horizontal]
    if not any(mentioned):
        return None, count, True
    if any(len(m) != 1 for m in mentioned):
        return None, count, False
    return (kinds[0], colours[0], f"{vertical[0]} {horizontal[0]}"), count, True


def parse_caption(text: str) -> Optional[ParsedCaption]:
    """Reads a caption back into facts; None when some clause names a shape only in part.

    Clauses are split at punctuation and "and"; a clause either says nothing about a shape (e.g.
    "two shapes:") or names exactly one kind, one colour and one position.
    """
    facts, count = [], None
    for clause in _clauses(_words(text)):
        fact, clause_count, ok = _clause_facts(clause)
        if not ok:
            return None
        if clause_count is not None:
            count = clause_count
        if fact is not None:
            facts.append(fact)
    return ParsedCaption(facts=tuple(facts), count=count)


def caption_correct(text: str, scene: Scene) -> bool:
    """True when ``text`` states exactly the scene's shapes (and, if it says one, the right count)."""
    parsed = parse_caption(text)
    if parsed is None or not parsed.facts:
        return False
    if len(set(parsed.facts)) != len(parsed.facts) or frozenset(parsed.facts) != scene.facts:
        return False
    return parsed.count is None or parsed.count == len(scene.shapes)
