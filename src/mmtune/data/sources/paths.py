"""Where data lives: brace patterns, globs, ``::`` lists, local files, ``pipe:`` commands, fsspec URLs.

Public API:

* :func:`expand` ``(spec) -> list[str]``: ``a.tar::b.tar`` (webdataset's list separator), brace patterns
  (``shards/{00000..00099}.tar``, ``{a,b}.json``) and, for local paths, globs (``shards/*.tar``); the
  order is kept (globs sorted). A local path that does not exist raises :class:`DataError`.
* :func:`open_binary` ``(url) -> file``: a streamed binary reader: ``pipe:CMD`` runs a shell command
  and reads its stdout (webdataset's convention, e.g. ``pipe:aws s3 cp s3://b/000.tar -``), ``http(s)://``
  is read with the standard library and a URL with another scheme (``s3://``, ``gs://``, ...) through
  fsspec, both resumed where they stopped when a connection drops
  (:func:`~mmtune.data.sources.remote.open_remote`); anything else is a local file.
* :func:`is_remote`, :func:`resolve` (a relative path against a root), :func:`cache_root` (where derived
  files are kept: ``$XDG_CACHE_HOME/mmtune``, default ``~/.cache/mmtune``).
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import IO, Optional

from braceexpand import braceexpand

from mmtune.errors import DataError

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+://")


def is_remote(url: str) -> bool:
    """Whether ``url`` is a ``pipe:`` command or has a URL scheme (other than ``file://``)."""
    return url.startswith("pipe:") or (bool(_SCHEME.match(url)) and not url.startswith("file://"))


def _local(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def expand(spec: str) -> list[str]:
    """Every file named by ``spec`` (see the module docstring)."""
    out: list[str] = []
    for part in (p.strip() for p in spec.split("::")):
        if not part:
            continue
        for url in braceexpand(part):
            if is_remote(url):
                out.append(url)
                continue
            path = _local(url)
            if any(ch in path for ch in "*?["):
                matches = sorted(glob.glob(path))
                if not matches:
                    raise DataError(f"no file matches {path!r}")
                out.extend(matches)
            elif not Path(path).exists():
                raise DataError(f"data file not found: {path}")
            else:
                out.append(path)
    if not out:
        raise DataError(f"no data files in {spec!r}")
    return out


def open_binary(url: str) -> IO[bytes]:
    """A binary stream of ``url``, read as it arrives (never loaded whole)."""
    if is_remote(url):
        from mmtune.data.sources.remote import open_remote

        return open_remote(url)
    try:
        return open(_local(url), "rb")
    except OSError as exc:
        raise DataError(f"cannot open {url}: {exc}") from None


def resolve(path: str, root: Optional[str]) -> str:
    """``path`` joined to ``root`` when it is relative and a root is given."""
    if root is None or is_remote(path) or Path(path).is_absolute():
        return path
    return str(Path(root) / path)


def cache_root() -> Path:
    """The folder for files mmtune derives from data (lengths, Arrow copies): ``$XDG_CACHE_HOME/mmtune``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmtune"
