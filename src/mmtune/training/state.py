"""The trainer's state besides model and optimizer, as ``torch.distributed.checkpoint`` Stateful objects.

:func:`mmtune.training.checkpoint.save_checkpoint` passes them to ``dcp.save`` next to the model and
optimizer state dicts, and ``dcp.load`` restores them (as torchtitan does):

* ``trainer`` (:class:`TrainerState`): step, skipped-step count, LR scheduler; the same on every rank.
* ``loader`` and ``rng``: one entry per rank, ``loader.rank_{r}`` / ``rng.rank_{r}`` (``r`` the global
  rank). Each rank writes its own entry. On load, ``rng`` (:class:`RankState`) reads ``rank_{read_rank}``:
  its own on the same world size, rank 0's on another; ``loader`` (:class:`GatheredState`) reads the
  entries of every saved rank and hands them to the loader's ``load_state_dicts(states, read_rank)``
  (the map-mode position is global; stream mode deals the union of every reader's position over the
  readers there are now). An entry is one ``bytes`` value written with ``torch.save`` and read back with
  ``weights_only=True`` (:func:`~mmtune.training.checkpoint.decode_state`), so its keys need not be
  known before loading (a loader's per-source counts are not).

:func:`restore_legacy` applies the ``trainer_state.pt`` of a checkpoint written before these existed.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torch.optim.lr_scheduler import LRScheduler

from mmtune.training.checkpoint import decode_state, encode_state


class TrainerState:
    """Stateful: the step, skipped-step count and scheduler of a trainer (read and written in place)."""

    def __init__(self, owner: Any, scheduler: LRScheduler):
        self.owner, self.scheduler = owner, scheduler

    def state_dict(self) -> dict[str, Any]:
        """``{"step", "skipped", "scheduler"}`` as plain values."""
        return {"step": self.owner.step, "skipped": self.owner.skipped, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` into the trainer and its scheduler."""
        self.owner.step, self.owner.skipped = int(state["step"]), int(state["skipped"])
        self.scheduler.load_state_dict(state["scheduler"])


class RankState:
    """Stateful: one value per rank (see the module docstring); ``get()`` takes it, ``restore(v)`` puts it back."""

    def __init__(self, name: str, get: Callable[[], Any], restore: Callable[[Any], None], rank: int,
                 read_rank: int):
        self.name, self.get, self.restore, self.rank, self.read_rank = name, get, restore, rank, read_rank

    def state_dict(self) -> dict[str, bytes]:
        """Saving: this rank's entry; loading: the entry to read (its value is then replaced)."""
        return {f"rank_{self.rank}": encode_state(self.get())} if self.rank == self.read_rank \
            else {f"rank_{self.read_rank}": b""}

    def load_state_dict(self, state: dict[str, bytes]) -> None:
        """Restores the entry of rank ``read_rank``, refusing anything but plain values and tensors."""
        key = f"rank_{self.read_rank}"
        self.restore(decode_state(state[key], f"{self.name}.{key}"))


class GatheredState(RankState):
    """Stateful: one value per rank, saved like :class:`RankState`; loading (``saved_world`` set) reads
    the entries of all ``saved_world`` saved ranks and calls ``restore_all(values, read_rank)``."""

    def __init__(self, name: str, get: Callable[[], Any], restore_all: Callable[[list, int], None], rank: int,
                 read_rank: int, saved_world: Optional[int]):
        super().__init__(name, get, lambda value: restore_all([value], 0), rank, read_rank)
        self.restore_all, self.saved_world = restore_all, saved_world

    def state_dict(self) -> dict[str, bytes]:
        """Saving: this rank's entry; loading: every saved rank's entry (each value then replaced)."""
        if self.saved_world is None:
            return {f"rank_{self.rank}": encode_state(self.get())}
        return {f"rank_{r}": b"" for r in range(self.saved_world)}

    def load_state_dict(self, state: dict[str, bytes]) -> None:
        """Restores the entries of every saved rank together, refusing anything but plain values and tensors."""
        keys = [f"rank_{r}" for r in range(len(state))]
        self.restore_all([decode_state(state[k], f"{self.name}.{k}") for k in keys], self.read_rank)


def restore_legacy(states: dict[str, Any], legacy: dict[str, Any], read_rank: int) -> None:
    """Applies an old checkpoint's ``trainer_state.pt`` (lists indexed by rank) to ``states``."""
    states["trainer"].load_state_dict(legacy)
    for name in ("loader", "rng"):
        value = legacy[name][read_rank]
        if name in states and value is not None:
            states[name].restore(value)


def loader_restore(loader: Any) -> Callable[[list, int], None]:
    """How a loader takes the states of every saved rank: its ``load_state_dicts(states, read_rank)``, or
    else its ``load_state_dict`` of ``states[read_rank]``."""
    gathered = getattr(loader, "load_state_dicts", None)
    if gathered is not None:
        return gathered
    return lambda states, read_rank: loader.load_state_dict(states[read_rank])
