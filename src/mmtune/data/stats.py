"""The loader's running counts: per source (read, samples, bad, truncated, skipped, the first bad records
with their location), rows, tokens and padding, and the abort rule.

Public API:

* :class:`SourceCounts` and :class:`DataStats`: running counts per source (``read``, ``samples``,
  ``bad``, ``truncated``, ``skipped`` and the first :data:`MAX_REPORTS` bad records), rows, tokens and
  padding; ``merge`` adds a worker's counts, ``check`` raises :class:`~mmtune.errors.DataError` once a
  source's share of bad records passes ``data.max_bad_fraction``, naming the worst sources.

The abort rule: a source is judged once :data:`JUDGE_AFTER` of its records were read (or all of them,
for a smaller source); above ``max_bad_fraction`` bad the run stops with a DataError.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from mmtune.data.badrecords import BadRecord
from mmtune.errors import DataError

MAX_REPORTS = 5
"""How many bad records per source are kept (and logged) with their location."""
JUDGE_AFTER = 50
"""Records a source must have read before its bad fraction can abort a run."""


@dataclass
class SourceCounts:
    """Running counts of one source."""

    read: int = 0
    """Records read (good or bad)."""
    samples: int = 0
    """Records that became training samples."""
    bad: int = 0
    """Unreadable records: corrupt or missing images, malformed records, truncated tar members."""
    truncated: int = 0
    """Samples cut to max_seq_len."""
    skipped: int = 0
    """Records dropped on purpose (too long with overflow=skip, nothing supervised, image without a tower)."""
    reports: list[str] = field(default_factory=list)
    """The first few bad records: ``location: reason``."""

    @property
    def bad_fraction(self) -> float:
        """Bad records over records read (0 before any)."""
        return self.bad / self.read if self.read else 0.0


@dataclass
class DataStats:
    """Counts per source plus what this rank's batches held."""

    sources: dict[str, SourceCounts] = field(default_factory=dict)
    rows: int = 0
    tokens: int = 0
    padding: int = 0

    def of(self, source: str) -> SourceCounts:
        """The counts of ``source`` (created on first use)."""
        if source not in self.sources:
            self.sources[source] = SourceCounts()
        return self.sources[source]

    def add_bad(self, bad: BadRecord, *, read: bool = True) -> None:
        """Counts a bad record (and, unless ``read`` is False, the read that found it)."""
        counts = self.of(bad.source)
        counts.read += int(read)
        counts.bad += 1
        if len(counts.reports) < MAX_REPORTS:
            counts.reports.append(f"{bad.location}: {bad.reason}")

    @property
    def padding_fraction(self) -> float:
        """Padding positions over all positions of the batches counted."""
        total = self.tokens + self.padding
        return self.padding / total if total else 0.0

    def merge(self, other: "DataStats") -> list[str]:
        """Adds ``other``'s counts; returns the bad-record reports that are new here."""
        new: list[str] = []
        for name, theirs in other.sources.items():
            mine = self.of(name)
            for f in ("read", "samples", "bad", "truncated", "skipped"):
                setattr(mine, f, getattr(mine, f) + getattr(theirs, f))
            room = MAX_REPORTS - len(mine.reports)
            fresh = [f"{name}: {r}" for r in theirs.reports[:max(room, 0)]]
            mine.reports.extend(theirs.reports[:max(room, 0)])
            new.extend(fresh)
        self.rows += other.rows
        self.tokens += other.tokens
        self.padding += other.padding
        return new

    def take(self) -> "DataStats":
        """These counts, leaving this object empty (what a worker sends along with a batch)."""
        out = DataStats(self.sources, self.rows, self.tokens, self.padding)
        self.sources, self.rows, self.tokens, self.padding = {}, 0, 0, 0
        return out

    def check(self, max_bad_fraction: float, sizes: Optional[dict[str, int]] = None) -> None:
        """Raises DataError when a judged source has more than ``max_bad_fraction`` bad records."""
        sizes = sizes or {}
        over = [(name, c) for name, c in self.sources.items()
                if c.read >= min(JUDGE_AFTER, sizes.get(name) or JUDGE_AFTER)
                and c.bad_fraction > max_bad_fraction]
        if not over:
            return
        over.sort(key=lambda item: item[1].bad_fraction, reverse=True)
        parts = []
        for name, c in over[:3]:
            first = f"; first: {c.reports[0]}" if c.reports else ""
            parts.append(f"source {name!r}: {c.bad} of {c.read} records unreadable "
                         f"({100 * c.bad_fraction:.1f}%){first}")
        raise DataError(f"too much bad data (above data.max_bad_fraction = {100 * max_bad_fraction:g}%): "
                        + " | ".join(parts))

    def as_dict(self) -> dict:
        """Plain counts: ``{"sources": {name: {...}}, "rows", "tokens", "padding", "padding_fraction"}``."""
        return {"sources": {name: dataclasses.asdict(c) | {"bad_fraction": c.bad_fraction}
                            for name, c in self.sources.items()},
                "rows": self.rows, "tokens": self.tokens, "padding": self.padding,
                "padding_fraction": self.padding_fraction}

    def state_dict(self) -> dict:
        """What :meth:`load_state_dict` restores."""
        return {"sources": {n: dataclasses.asdict(c) for n, c in self.sources.items()},
                "rows": self.rows, "tokens": self.tokens, "padding": self.padding}

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`."""
        self.sources = {n: SourceCounts(**c) for n, c in state["sources"].items()}
        self.rows, self.tokens, self.padding = state["rows"], state["tokens"], state["padding"]
