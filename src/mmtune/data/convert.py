"""LLaVA multi-turn JSON -> one record per question/answer pair, streamed.

What LLaMA2-Accessory's ``tools/llava_to_single_turn.py`` does, without its flaws:

* one output record per ``(human, gpt)`` pair, a copy of the input record (every other field kept) whose
  ``conversations`` holds just that pair, with ``<image>`` removed from both turns;
* newlines are kept (the old tool deleted every ``\\n``, gluing paragraphs and lists together);
* ids are unique: ``{id}_{turn}`` (turn counted from 0); the old tool repeated the id;
* an odd number of turns, turns out of order (not human, gpt, human, ...) and non-text values are
  reported (the old tool dropped or mis-paired them silently, or crashed); such pairs are skipped;
* ``image_prefix`` is prepended to the ``image`` field (so paths resolve where the images are);
* the input is read incrementally (ijson), so a 40 GB file never sits in memory.

``strip_newlines=True`` reproduces the old output exactly: newlines deleted, ids unchanged, every pair
kept as it comes, and the file written as ``json.dump`` writes a list (problems are still reported).

Public API: :func:`llava_to_single_turn` ``(src, dst, *, strip_newlines=False, image_prefix=None,
progress=True) -> ConvertReport``; :func:`split_record`; :func:`iter_json_array`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Optional

from mmtune.errors import DataError

MAX_PROBLEMS = 20
"""Problems kept (with their record id) in the report; all are counted."""
_ORDER = ("human", "gpt")


@dataclass
class ConvertReport:
    """What a conversion did."""

    records: int = 0
    """Input records read."""
    written: int = 0
    """Single-turn records written."""
    problems: int = 0
    """Problems found: an odd number of turns, turns out of order, non-text values (a record may have several)."""
    bad_records: int = 0
    """Input records with at least one problem."""
    examples: list[str] = field(default_factory=list)
    """The first :data:`MAX_PROBLEMS` problems."""

    def note(self, message: str) -> None:
        """Counts a problem, keeping the first few."""
        self.problems += 1
        if len(self.examples) < MAX_PROBLEMS:
            self.examples.append(message)

    @property
    def bad_fraction(self) -> float:
        """Records with a problem over records read (0 before any)."""
        return self.bad_records / self.records if self.records else 0.0


def iter_json_array(stream: IO[bytes]) -> Iterator[Any]:
    """The items of the JSON array in ``stream``, parsed one at a time."""
    import ijson

    try:
        yield from ijson.items(stream, "item", use_float=True)
    except ijson.JSONError as exc:
        raise DataError(f"not a valid JSON array of records: {exc}") from None


def _clean(turn: dict, strip_newlines: bool) -> dict:
    out = {}
    for key, value in turn.items():
        if isinstance(value, str):
            value = value.replace("<image>", "")
            value = value.replace("\n", "") if strip_newlines else value.strip("\n")
        out[key] = value
    return out


def _pair_problem(pair: list, index: int) -> Optional[str]:
    if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in pair):
        return f"turns {2 * index}-{2 * index + 1} are not {{'from', 'value'}} text turns"
    sides = tuple(t.get("from") for t in pair)
    if sides != _ORDER:
        return f"turns {2 * index}-{2 * index + 1} come from {sides[0]!r}, {sides[1]!r} (expected 'human', 'gpt')"
    return None


def split_record(item: Any, report: ConvertReport, *, strip_newlines: bool = False,
                 image_prefix: Optional[str] = None) -> list[dict]:
    """The single-turn records of one LLaVA record (problems go to ``report``)."""
    rid = item.get("id", f"#{report.records}") if isinstance(item, dict) else f"#{report.records}"
    turns = item.get("conversations") if isinstance(item, dict) else None
    if not isinstance(turns, list):
        report.note(f"record {rid}: no 'conversations' list; skipped")
        return []
    if len(turns) % 2:
        report.note(f"record {rid}: odd number of turns ({len(turns)}); the last one is dropped")
    out = []
    for i in range(len(turns) // 2):
        pair = turns[2 * i:2 * i + 2]
        problem = _pair_problem(pair, i)
        if problem:
            report.note(f"record {rid}: {problem}" + ("" if strip_newlines else "; skipped"))
            if not strip_newlines or not all(isinstance(t, dict) for t in pair):
                continue
        new = copy.deepcopy({k: v for k, v in item.items() if k != "conversations"})
        new["conversations"] = [_clean(t, strip_newlines) for t in pair]
        new = {k: new[k] for k in item}  # keep the input's field order
        if not strip_newlines and "id" in item:
            new["id"] = f"{item['id']}_{i}"
        if image_prefix and isinstance(new.get("image"), str):
            new["image"] = image_prefix + new["image"]
        out.append(new)
    return out


def llava_to_single_turn(src: str | Path, dst: str | Path, *, strip_newlines: bool = False,
                         image_prefix: Optional[str] = None, progress: bool = True) -> ConvertReport:
    """Converts LLaVA JSON file ``src`` into single-turn JSON file ``dst`` (see the module docstring)."""
    from tqdm import tqdm

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise DataError(f"input file not found: {src}")
    report = ConvertReport()
    with open(src, "rb") as raw, tqdm.wrapattr(raw, "read", total=src.stat().st_size, desc=src.name,
                                                disable=not progress) as stream, \
            open(dst, "w", encoding="utf-8") as out:
        out.write("[")
        for item in iter_json_array(stream):
            problems = report.problems
            for record in split_record(item, report, strip_newlines=strip_newlines, image_prefix=image_prefix):
                out.write(", " if report.written else "")
                out.write(json.dumps(record))
                report.written += 1
            report.records += 1
            report.bad_records += int(report.problems > problems)
        out.write("]")
    return report
