"""Bad records: what a reader yields instead of a record it cannot read.

Public API:

* :class:`BadRecord` ``(source, location, reason)``: a malformed JSON line, a truncated tar member, a
  sample without a caption, ... with where it was found. The loader counts them per source
  (:mod:`mmtune.data.stats`); an image that fails to decode later becomes one too
  (:func:`mmtune.data.images.decode_row_images`).
"""

from __future__ import annotations

from typing import NamedTuple


class BadRecord(NamedTuple):
    """A record a reader could not turn into a sample."""

    source: str
    location: str
    reason: str
