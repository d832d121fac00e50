"""A bounded job queue in front of the (single, not thread-safe) model.

One thread runs jobs strictly in order, so the model, its KV cache and (under tensor parallelism) the
collectives of every rank see one request at a time. At most ``max_pending`` jobs may wait or run; a
``submit`` beyond that raises :class:`Overloaded` at once (the API answers 503) instead of letting
memory and latency grow without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Callable, Optional, TypeVar

from mmtune.errors import MMTuneError

T = TypeVar("T")
logger = logging.getLogger(__name__)


class Overloaded(MMTuneError):
    """Every slot of the queue is taken; the caller should retry later."""


class Worker:
    """Runs submitted callables one after another on a dedicated thread."""

    def __init__(self, max_pending: int = 8, name: str = "mmtune-engine"):
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self._slots = threading.BoundedSemaphore(max_pending)
        self._jobs: queue.Queue[Optional[tuple[Callable[[], object], Future]]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> "Future[T]":
        """Queues ``fn``; raises :class:`Overloaded` when ``max_pending`` jobs are already queued or running."""
        if not self._slots.acquire(blocking=False):
            raise Overloaded(f"the server is busy ({self.max_pending} requests queued or running); retry later")
        future: Future = Future()
        self._jobs.put((fn, future))
        return future

    def _loop(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            fn, future = item
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # handed to the waiting caller
                        future.set_exception(exc)
            finally:
                self._slots.release()

    def close(self, timeout: float | None = None) -> None:
        """Lets queued jobs finish, then stops the thread."""
        self._jobs.put(None)
        self._thread.join(timeout)
