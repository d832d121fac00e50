"""Error types for mistakes a user can make (as opposed to bugs, which stay asserts)."""

from __future__ import annotations


class MMTuneError(Exception):
    """Base class of every error mmtune reports to a user as one clear line."""


class ConfigError(MMTuneError, ValueError):
    """A configuration value is missing, malformed or out of range.

    ``field`` is the dotted name (``training.lr``), ``value`` what was given and
    ``allowed`` a short description of what would have been accepted.
    """

    def __init__(self, field: str, value: object, allowed: str):
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"config field {field!r}: got {value!r}; expected {allowed}")


class CheckpointError(MMTuneError, ValueError):
    """A checkpoint or saved-model directory cannot be read as asked."""


class DataError(MMTuneError, ValueError):
    """A dataset cannot be read, or too much of it is bad to go on."""
