"""Timing shared by the benchmarks: sides measured in turn, so that the machine's load hits all alike."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved_medians(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """The median wall time of each of ``fns`` over ``repeats`` rounds that call every function once, in
    turn (after one warm-up call each), so that a change in the machine's load hits all of them alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
