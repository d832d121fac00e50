"""Running the ASGI app with uvicorn: in the foreground (``mmtune serve``) or on a background thread."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def make_server(app: Any, host: str = "127.0.0.1", port: int = 7860, log_level: str = "info") -> uvicorn.Server:
    """A uvicorn server for ``app`` (one process, one event loop; the model runs on the worker thread)."""
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=5)
    return uvicorn.Server(config)


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` serves ``app`` on 127.0.0.1 from a thread until the block ends."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None):
        self.host, self.port = host, port or free_port(host)
        self.server = make_server(app, self.host, self.port, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, name="mmtune-http", daemon=True)

    @property
    def url(self) -> str:
        """The base URL, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
