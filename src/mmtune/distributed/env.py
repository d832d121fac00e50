"""Process groups and device meshes for one process or a ``torchrun`` job (single or multi node).

``torchrun`` (its rendezvous, nothing home-made) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
without them the run is one process with a one-rank process group, so the same distributed code runs
everywhere (FSDP2 itself only where it shards or casts: ``parallelize.needs_fsdp``). The backend is
NCCL on GPUs and gloo on CPUs. :func:`shutdown` frees the model and optimizer before destroying the
process group: destroying it while they are alive aborts some gloo runs at interpreter exit.
"""

from __future__ import annotations

import gc
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from mmtune.errors import ConfigError
from mmtune.machine import usable_cores

log = logging.getLogger(__name__)


@dataclass
class DistEnv:
    """Where this process sits: global rank, world size, device, and the meshes.

    ``dp_rank``/``dp_size`` index the data-parallel replicas (tensor-parallel ranks of one replica see
    the same data); ``mesh`` is the full mesh (1-D ``("dp",)`` or 2-D ``("dp", "tp")``), None until
    :func:`init_distributed` sets it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    tp: int = 1
    mesh: Optional[DeviceMesh] = None

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (logging, progress bars, small files)."""
        return self.rank == 0

    @property
    def dp_size(self) -> int:
        """Number of data-parallel replicas."""
        return self.world_size // self.tp

    @property
    def dp_rank(self) -> int:
        """This process's data-parallel index."""
        return self.rank // self.tp

    @property
    def dp_mesh(self) -> Optional[DeviceMesh]:
        """The data-parallel (FSDP) sub-mesh, or None for one process."""
        if self.mesh is None:
            return None
        return self.mesh["dp"] if self.mesh.ndim == 2 else self.mesh

    @property
    def tp_mesh(self) -> Optional[DeviceMesh]:
        """The tensor-parallel sub-mesh, or None without tensor parallelism."""
        return self.mesh["tp"] if self.mesh is not None and self.mesh.ndim == 2 else None

    @property
    def dp_group(self) -> Optional[dist.ProcessGroup]:
        """The process group over which data (and token counts) are split."""
        mesh = self.dp_mesh
        return mesh.get_group() if mesh is not None else None


def check_world(world: int, tp: int) -> None:
    """Raises ConfigError unless ``tp`` divides the number of processes ``world``."""
    if world % tp:
        raise ConfigError("parallel.tp", tp, f"a divisor of the number of processes ({world})")


def init_distributed(tp: int = 1, timeout_minutes: float = 30.0) -> DistEnv:
    """Joins the ``torchrun`` job described by the environment, or starts a one-process group.

    A single process still gets a process group (on an in-memory store) and a one-rank mesh, so the
    same distributed code runs everywhere. Raises ConfigError when ``tp`` does not divide the world size.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    check_world(world, tp)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    env = DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device, tp=tp)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(minutes=timeout_minutes)
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    shape, names = ((world // tp, tp), ("dp", "tp")) if tp > 1 else ((world,), ("dp",))
    env.mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
    log.info("rank %d of %d on %s (dp %d x tp %d)", rank, world, device, world // tp, tp)
    return env


def cpu_threads(configured: int, loader_workers: int, local_ranks: int, cores: int) -> int:
    """Intra-op threads for one CPU rank: ``configured`` when positive, else this node's cores shared
    among its ranks, less one per loader worker (each worker process decodes on a core of its own),
    and at least one."""
    if configured > 0:
        return configured
    return max(1, cores // max(local_ranks, 1) - loader_workers)


MMAP_THRESHOLD_BYTES = 4 * 1024**2
"""Host allocations of at least this size are memory-mapped, so freeing them returns them to the OS."""


def return_large_frees_to_the_os(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fixes glibc's ``M_MMAP_THRESHOLD`` at ``threshold`` (True when set).

    glibc raises its threshold to the size of each memory-mapped block freed (up to 32 MiB), after which
    blocks of a few to 32 MiB (a 2048 x 2048 fp32 weight is 16 MiB) come from the heap and stay resident
    when freed; a rank that gathers and frees decoder blocks then holds their memory twice. A fixed
    threshold keeps every such block mapped, and freed means given back. Not glibc: nothing happens.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return False
    m_mmap_threshold = -3  # <malloc.h>
    return bool(mallopt is not None and mallopt(m_mmap_threshold, int(threshold)) == 1)


@contextmanager
def cpu_threads_for(env: DistEnv, configured: int, loader_workers: int) -> Iterator[None]:
    """Runs the body with :func:`cpu_threads` intra-op threads on a CPU rank, then restores the count.

    GPU ranks are left alone, and so is automatic choice (``configured`` 0) when ``OMP_NUM_THREADS``
    is set (torchrun sets it to 1 for several processes per node; a user may set it on purpose).
    """
    before = torch.get_num_threads()
    if env.device.type != "cpu" or (configured == 0 and "OMP_NUM_THREADS" in os.environ):
        yield
        return
    cores = usable_cores()
    threads = cpu_threads(configured, loader_workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), cores)
    torch.set_num_threads(threads)
    log.info("%d intra-op CPU threads per rank (%d cores, %d loader workers)", threads, cores, loader_workers)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def all_reduce_sum(value: torch.Tensor, group: Optional[dist.ProcessGroup] = None) -> torch.Tensor:
    """Sums ``value`` over ``group`` (a no-op without a process group); returns the reduced tensor."""
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
    return value


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Waits for every rank (a no-op in one process)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown(holder: Optional[dict] = None, wait: bool = True) -> None:
    """Drops the references in ``holder`` (model, optimizer, ...), collects garbage, then destroys the
    process group, so that every process exits with code 0. ``wait=False`` (after an error) skips the
    final barrier, which other ranks may never reach."""
    if holder is not None:
        holder.clear()
    gc.collect()
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
