"""The training batch and the loader contract between the data layer and the trainer.

Public API:

* :class:`Batch`: ``B`` rows of ``T`` tokens as typed tensors (``input_ids``, ``labels``, ``positions``,
  ``sample_ids``, optional ``pixel_values``) plus the counts :func:`~mmtune.data.packing.collate` adds
  (``num_samples``, ``num_supervised``, ``num_tokens``, ``num_padding``, plain ints), the samples'
  ``keys`` and the loader ``epoch``;
  :meth:`Batch.from_tensors` computes the counts, :meth:`Batch.to` moves the tensors to a device,
  :meth:`Batch.model_inputs` is what the model's forward takes besides ``input_ids``. The layout is the
  Batch contract of ``docs/architecture.md``.
* :class:`BatchLoader`: what the trainer needs of a loader: iterating yields one epoch of this rank's
  :class:`Batch` es; ``rows_per_epoch`` (a property: rows of one epoch over all ranks, None when unknown);
  ``state_dict()`` / ``load_state_dict(state)`` with plain Python values; optionally
  ``load_state_dicts(states, read_rank)``, the states of every saved rank (see
  :mod:`mmtune.training.state`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol

import torch

from mmtune.data.encode import IGNORE_INDEX


@dataclass(frozen=True, eq=False)  # tensors: compare fields with torch.equal
class Batch:
    """One micro-batch: ``B`` rows of ``T`` tokens (see the module docstring)."""

    input_ids: torch.Tensor
    """[B, T] long: token ids; image positions hold ``image_token_id``, padding holds ``pad_id``."""
    labels: torch.Tensor
    """[B, T] long, already shifted: the target of the logits at each position, ``IGNORE_INDEX`` if none."""
    positions: torch.Tensor
    """[B, T] long: RoPE positions, restarting at 0 for each packed sample."""
    sample_ids: torch.Tensor
    """[B, T] long: the sample of the row each token belongs to (0, 1, ...); padding is -1."""
    pixel_values: Optional[torch.Tensor] = None
    """[N_img, 3, H, W] float: the images in order of appearance; None for a text-only batch."""
    num_samples: int = 0
    """Samples in the batch (a sample blanked out for a bad image does not count)."""
    num_supervised: int = 0
    """Positions with a target."""
    num_tokens: int = 0
    """Non-padding positions."""
    num_padding: int = 0
    """Padding positions."""
    keys: tuple[str, ...] = ()
    """The identities of the samples trained on (``data.log_samples``), row after row."""
    epoch: int = 0
    """The loader epoch the batch belongs to (counted from 0)."""

    @classmethod
    def from_tensors(cls, input_ids: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor,
                     sample_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None,
                     num_samples: Optional[int] = None) -> "Batch":
        """A batch with its counts computed from the tensors (``num_samples`` defaults to the samples the
        sample ids name: ``max(sample_ids) + 1`` per row)."""
        num_tokens = int((sample_ids >= 0).sum())
        if num_samples is None:
            num_samples = int((sample_ids.amax(dim=1) + 1).sum())
        return cls(input_ids, labels, positions, sample_ids, pixel_values, num_samples,
                   int((labels != IGNORE_INDEX).sum()), num_tokens, input_ids.numel() - num_tokens)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        """This batch with its tensors on ``device`` (the counts stay plain ints)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """This batch in pinned memory (torch's DataLoader calls it with ``pin_memory=True``)."""
        return self._map(lambda t: t.pin_memory())

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of the model's forward besides ``input_ids``: ``positions``,
        ``sample_ids`` and, when the batch has images, ``pixel_values``."""
        inputs = {"positions": self.positions, "sample_ids": self.sample_ids}
        if self.pixel_values is not None:
            inputs["pixel_values"] = self.pixel_values
        return inputs

    def _map(self, move: Callable[[torch.Tensor], torch.Tensor]) -> "Batch":
        pixels = move(self.pixel_values) if self.pixel_values is not None else None
        return dataclasses.replace(self, input_ids=move(self.input_ids), labels=move(self.labels),
                                   positions=move(self.positions), sample_ids=move(self.sample_ids),
                                   pixel_values=pixels)


class BatchLoader(Protocol):
    """The loader contract of the trainer (:class:`mmtune.data.loader.Loader` is the real one)."""

    @property
    def rows_per_epoch(self) -> Optional[int]:
        """Rows of one epoch over all ranks; None when unknown (or a ConfigError saying what would make it
        known, as :class:`mmtune.data.loader.Loader` raises for uncounted streams)."""

    def __iter__(self) -> Iterator[Batch]:
        """One epoch of this rank's micro-batches."""

    def state_dict(self) -> dict[str, Any]:
        """This rank's position (plain Python values)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from :meth:`state_dict`."""
