"""A file server on 127.0.0.1 for the remote-reading tests: serves a folder over HTTP in a thread,
honours ``Range`` (or ignores it), and can drop a file's connection after a given byte."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator


@dataclass
class Behaviour:
    """What the server does; tests change it while the server runs."""

    drops: dict[str, tuple[int, int]] = field(default_factory=dict)
    """file name -> (absolute byte after which the connection is dropped, how many times; -1: always)."""
    ranges: bool = True
    """Honour ``Range: bytes=N-`` (206); False sends the whole file again (200)."""
    requests: list[tuple[str, int]] = field(default_factory=list)
    """(file name, first byte asked for) of every request served."""


def _handler(root: Path, behaviour: Behaviour) -> type:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            name = self.path.lstrip("/")
            path = root / name
            start = int(self.headers.get("Range", "bytes=0-")[6:].split("-")[0]) if behaviour.ranges else 0
            behaviour.requests.append((name, start))
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            cut, times = behaviour.drops.get(name, (len(data), 0))
            if times and start <= cut:
                behaviour.drops[name] = (cut, times - 1 if times > 0 else times)
                self.wfile.write(data[start:cut])
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(2)
                return
            self.wfile.write(data[start:])

    return Handler


@contextlib.contextmanager
def serve(root: Path) -> Iterator[tuple[str, Behaviour]]:
    """(base URL ``http://127.0.0.1:PORT``, its :class:`Behaviour`) of a server of ``root`` while in use."""
    behaviour = Behaviour()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, behaviour))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", behaviour
    finally:
        server.shutdown()
        server.server_close()
