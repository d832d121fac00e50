"""Facts about the machine a figure was measured on: CPU model, cores, threads, library versions.

Float summation order differs across CPUs and thread counts, so a figure (a loss, an accuracy, a
wall time) is only comparable next to the machine and the thread count that produced it.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_facts() -> dict[str, object]:
    """CPU model, usable cores, this process's intra-op threads, GPU (if any), torch, Python, OS."""
    import torch

    cores = usable_cores()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cores": cores, "threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "python": sys.version.split()[0], "os": platform.platform()}
