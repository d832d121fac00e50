"""Remote reading: HTTP(S) with resumption, other fsspec URLs, ``pipe:`` commands.

Public API:

* :func:`open_remote` ``(url, retries=RETRIES) -> ResumingStream``: a buffered binary reader of ``url``.
  ``http://`` and ``https://`` are read with the standard library (no extra package); any other scheme
  (``s3://``, ``gs://``, ``memory://``, ...) through fsspec (its backend package must be installed);
  ``pipe:CMD`` reads a shell command's stdout (webdataset's ``gopen``).
* :class:`ResumingStream`: when the connection drops mid-file (reset, timeout, fewer bytes than the
  server announced), the stream is opened again at the byte it reached, at most ``retries`` times per
  file: HTTP asks for the rest with a ``Range`` header (a server that ignores it sends the whole file
  again and the bytes already read are skipped), fsspec files seek, a ``pipe:`` command is run again
  and the bytes already read are skipped. After the last retry it raises ``OSError`` naming the URL and
  the byte reached; the reader of that file decides what is lost (a shard's unread rest is one bad record).
  A missing file (HTTP 4xx) is not retried: :class:`~mmtune.errors.DataError` at once.
* :data:`RETRIES`, :data:`TIMEOUT`.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import time
import urllib.error
import urllib.request
from typing import IO, Callable

from mmtune.errors import DataError

RETRIES = 3
"""Times one remote file is opened again after its connection dropped, before the read fails."""
TIMEOUT = 30.0
"""Seconds without data before a remote read counts as dropped."""
BACKOFF = 0.1
"""Seconds slept before retry ``n`` (times ``n``)."""
_CHUNK = 1 << 16


def _skip(stream: IO[bytes], count: int) -> None:
    while count > 0:
        got = stream.read(min(count, _CHUNK))
        if not got:
            raise OSError(f"stream ended {count} bytes before the resume point")
        count -= len(got)


def _open_http(url: str, offset: int) -> IO[bytes]:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            raise DataError(f"cannot open {url}: HTTP {exc.code} {exc.reason}") from None
        raise
    if offset and response.status != 206:
        _skip(response, offset)  # the server ignored Range: it sends everything again
    return response


def _open_fsspec(url: str, offset: int) -> IO[bytes]:
    import fsspec

    stream = fsspec.open(url, "rb").open()
    if offset:
        stream.seek(offset)
    return stream


def _open_pipe(url: str, offset: int) -> IO[bytes]:
    from webdataset import gopen

    stream = gopen(url, "rb")
    _skip(stream, offset)
    return stream


def _opener(url: str) -> Callable[[str, int], IO[bytes]]:
    if url.startswith("pipe:"):
        return _open_pipe
    if url.lower().startswith(("http://", "https://")):
        return _open_http
    return _open_fsspec


class ResumingStream(io.RawIOBase):
    """A remote file read from start to end, opened again where it stopped when the connection drops
    (see the module docstring)."""

    def __init__(self, url: str, opener: Callable[[str, int], IO[bytes]], retries: int = RETRIES):
        super().__init__()
        self.url, self._opener, self.retries = url, opener, retries
        self.position = 0
        """Bytes read so far."""
        self.resumed = 0
        """Times the stream was opened again."""
        self._stream: IO[bytes] = io.BytesIO()
        self._expected = None
        try:
            self._stream = opener(url, 0)
            self._expected = getattr(self._stream, "length", None)
        except (OSError, http.client.HTTPException) as exc:
            self._resume(exc)

    def readable(self) -> bool:
        return True

    def _read_some(self, buffer: memoryview) -> int:
        data = self._stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        if not n and len(buffer) and self._expected:
            raise http.client.IncompleteRead(b"", self._expected)  # fewer bytes than announced
        if self._expected is not None:
            self._expected -= n
        return n

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        while True:
            try:
                n = self._read_some(view)
                self.position += n
                return n
            except (OSError, http.client.HTTPException) as exc:
                self._resume(exc)

    def _resume(self, exc: BaseException) -> None:
        while True:
            if self.resumed >= self.retries:
                raise OSError(f"{self.url}: connection lost at byte {self.position} after {self.retries} "
                              f"retries ({type(exc).__name__}: {exc})") from None
            self.resumed += 1
            time.sleep(BACKOFF * self.resumed)
            with contextlib.suppress(Exception):
                self._stream.close()
            try:
                self._stream = self._opener(self.url, self.position)
            except (OSError, http.client.HTTPException) as again:
                exc = again
                continue
            self._expected = getattr(self._stream, "length", None)
            return

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()
        super().close()


def open_remote(url: str, retries: int = RETRIES) -> IO[bytes]:
    """A buffered binary reader of remote ``url`` (see the module docstring)."""
    try:
        return io.BufferedReader(ResumingStream(url, _opener(url), retries), buffer_size=_CHUNK)
    except DataError:
        raise
    except (OSError, ValueError, ImportError, http.client.HTTPException) as exc:
        raise DataError(f"cannot open {url}: {exc}") from None
