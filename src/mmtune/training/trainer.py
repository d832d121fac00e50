"""The trainer for both stages: FSDP2 model, AdamW, warm-up + cosine, exact loss, checkpoints, metrics.

One optimizer step = ``accumulation`` micro-batches per data-parallel rank, where
``accumulation = global_batch_size / (micro_batch_size * dp_size)``. The loss is the sum of token
cross-entropies divided by the number of supervised tokens of the whole step over all ranks, so
1 rank and N ranks give the same losses at the same global batch. A step whose loss or gradient norm
is not finite is skipped (no update) and counted; ``max_bad_steps`` in a row stop the run.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

from mmtune.config import Config, save_config
from mmtune.data.batch import Batch, BatchLoader
from mmtune.distributed.env import DistEnv
from mmtune.distributed.parallelize import compute_dtype, decoder, parallelize, separate_head
from mmtune.errors import ConfigError, DataError, MMTuneError
from mmtune.training import checkpoint as ckpt
from mmtune.training.fused_loss import supervised_loss_sum
from mmtune.training.hooks import StepHook, unsharded_copy
from mmtune.training.loss import step_counts, token_loss_sum
from mmtune.training.metrics import (
    MetricsLogger,
    flops_per_token,
    host_peak_rss_gb,
    peak_flops,
    peak_memory_gb,
    seconds_since_launch,
)
from mmtune.training.optim import build_optimizer, build_scheduler, clip_grad_norm
from mmtune.training.samples import SamplesLog
from mmtune.training.state import GatheredState, RankState, TrainerState, loader_restore, restore_legacy

log = logging.getLogger(__name__)


@dataclass
class RunParts:
    """What a run needs besides its config.

    ``build_model(device)`` builds the model (the trainer asks for ``"meta"`` and materialises it shard
    by shard, see :mod:`mmtune.formats.loading`); ``loader`` yields this rank's
    :class:`~mmtune.data.batch.Batch` es (a :class:`~mmtune.data.batch.BatchLoader`; None for a trainer
    driven by :meth:`Trainer.train_step` alone, with ``training.max_steps`` set); ``write_extras(dir)``
    adds files (tokenizer) to each checkpoint; ``hooks`` run at the steps they choose
    (:mod:`mmtune.training.hooks`: evaluation during training).
    """

    build_model: Callable[[str], nn.Module]
    loader: Optional[BatchLoader]
    image_token_id: Optional[int] = None
    write_extras: Optional[Callable[[Path], None]] = None
    hooks: list[StepHook] = field(default_factory=list)


@dataclass
class StepResult:
    """What one optimizer step measured."""

    loss: float
    grad_norm: float
    lr: float
    counts: dict
    skipped: bool


def accumulation_steps(global_batch: int, micro_batch: int, dp_size: int) -> int:
    """Micro-batches per rank and step; ConfigError unless the global batch divides evenly."""
    if global_batch % (micro_batch * dp_size):
        raise ConfigError("training.global_batch_size", global_batch,
                          f"a multiple of micro_batch_size x data-parallel ranks = {micro_batch * dp_size}")
    return global_batch // (micro_batch * dp_size)


def total_steps(cfg: Config, loader: Optional[BatchLoader]) -> int:
    """``training.max_steps``, else ``ceil(epochs * rows_per_epoch / global_batch_size)``."""
    if cfg.training.max_steps is not None:
        return cfg.training.max_steps
    rows = loader.rows_per_epoch if loader is not None else None
    if not rows:
        raise ConfigError("training.max_steps", None, "a number of steps (the data's length is unknown)")
    return max(1, math.ceil(cfg.training.epochs * rows / cfg.training.global_batch_size))


class Trainer:
    """Builds the sharded model and optimizer for ``cfg`` on ``env`` and runs :meth:`fit`."""

    def __init__(self, cfg: Config, env: DistEnv, parts: RunParts, resuming: bool = False):
        """``resuming``: the weights will come from a checkpoint (:meth:`fit` with ``resume``), so the
        starting weights (``training.init_from``, ``vision.path``, fresh units) are not read at all."""
        self.cfg, self.env, self.parts = cfg, env, parts
        self.resuming = resuming
        self.out = Path(cfg.training.output_dir)
        self.accum = accumulation_steps(cfg.training.global_batch_size, cfg.training.micro_batch_size,
                                        env.dp_size)
        self.total_steps = total_steps(cfg, parts.loader)
        self.model = self._build_model()
        self.head = separate_head(self.model)  # when set, the loss runs it on supervised positions only
        self.optimizer = build_optimizer(self.model, cfg.training, env.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.training, self.total_steps)
        self.step = self.bad_in_row = self.skipped = 0
        self.window = Counter()  # time, data wait and counts of the steps since the last metrics line
        self.last_saved: Optional[Path] = None
        self.flops_per_token = self._flops_per_token()

    def _build_model(self) -> nn.Module:
        """Every rank builds the model on the meta device, applies the parallel plan, allocates its own
        shards and fills them (:func:`mmtune.training.weights.initial_weights`)."""
        from mmtune.training.weights import initial_weights

        cfg, env = self.cfg, self.env
        torch.manual_seed(cfg.training.seed)  # the run's global generator (fresh weights use their own)
        model = self.parts.build_model("meta")
        model.train()
        if hasattr(model, "set_trainable"):
            model.set_trainable(cfg.trainable)
        dtype = compute_dtype(cfg.training.dtype, env.device)
        parallelize(model, cfg.parallel, env.dp_mesh, env.tp_mesh, dtype)
        model.to_empty(device=env.device)
        model.init_buffers(env.device)
        if not self.resuming:
            initial_weights(cfg, model, self.parts.build_model("meta"), progress=env.is_main)
        return model

    def _flops_per_token(self) -> float:
        dec = getattr(decoder(self.model), "cfg", None)
        if dec is None:
            return 0.0
        return flops_per_token(self.model, self.cfg.data.max_seq_len, dec.n_layers, dec.dim)

    # ------------------------------------------------------------------ the step

    def _loss_sum(self, batch: Batch) -> torch.Tensor:
        """Summed token cross-entropy of one micro-batch; with a separate head, logits are computed
        only at supervised positions (no [B, T, vocab] tensor)."""
        if self.head is None:
            return token_loss_sum(self.model(batch.input_ids, **batch.model_inputs()), batch.labels)
        hidden = self.model(batch.input_ids, **batch.model_inputs(), return_hidden=True)
        return supervised_loss_sum(hidden, self.head, batch.labels)

    def train_step(self, micro_batches: list[Batch]) -> StepResult:
        """Forward/backward over this rank's micro-batches, then clip and update (or skip)."""
        counts = step_counts(micro_batches, self.env.dp_group, self.env.device)
        scale = self.env.dp_size / max(counts["supervised"], 1)  # FSDP averages gradients over dp ranks
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.env.device)
        for i, batch in enumerate(micro_batches):
            if isinstance(self.model, FSDPModule):
                self.model.set_requires_gradient_sync(i == len(micro_batches) - 1)
            loss = self._loss_sum(batch)
            (loss * scale).backward()
            loss_sum += loss.detach().double()
        torch.distributed.all_reduce(loss_sum, group=self.env.dp_group)
        loss = float(loss_sum) / max(counts["supervised"], 1)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = clip_grad_norm(params, self.cfg.training.clip_grad)
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm)) or counts["supervised"] == 0
        lr = self.optimizer.param_groups[0]["lr"]
        if not skipped:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, grad_norm, lr, counts, skipped)

    # ------------------------------------------------------------------ the loop

    def _batches(self) -> Iterator[Batch]:
        """This rank's micro-batches on the device, epoch after epoch."""
        loader = self._loader()
        while True:
            empty = True
            for batch in loader:
                empty = False
                yield batch.to(self.env.device, non_blocking=True)
            if empty:
                raise DataError("the training data yielded no batch")

    def fit(self, resume: Optional[Path] = None) -> Optional[Path]:
        """Trains to ``total_steps`` (continuing from ``resume``); returns the last checkpoint."""
        if self.resuming and resume is None:
            raise MMTuneError("this trainer was built to resume but fit() got no checkpoint")
        if resume is not None:
            self.load(resume)
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")
        metrics = MetricsLogger(self.out, self.env.is_main, self.total_steps, self.step)
        batches = self._batches()
        samples = SamplesLog(self.out, self.env.rank, self.cfg.data.log_samples, self.env.tp)
        log.info("training steps %d..%d: %d micro-batches of %d rows per rank and step, %d ranks",
                 self.step + 1, self.total_steps, self.accum, self.cfg.training.micro_batch_size,
                 self.env.world_size)
        first = self.step + 1
        try:
            while self.step < self.total_steps:
                started = time.perf_counter()
                micro = [next(batches) for _ in range(self.accum)]
                waited = time.perf_counter() - started
                result = self.train_step(micro)
                self.step += 1
                samples.write(self.step, micro)
                if self.step == first:
                    self._log_startup()
                self._after_step(result, metrics, started, waited)
                self._run_hooks(metrics)
            if self.last_saved is None or not self.last_saved.name.endswith(f"{self.step:08d}"):
                self.save()
        finally:
            metrics.close()
        return self.last_saved

    def _log_startup(self) -> None:
        """Logs the time from launch to the end of this process's first step and every rank's peak host
        memory so far (one all-gather)."""
        peak = torch.tensor([host_peak_rss_gb()], dtype=torch.float64, device=self.env.device)
        peaks = [torch.zeros_like(peak) for _ in range(self.env.world_size)]
        torch.distributed.all_gather(peaks, peak)
        since = seconds_since_launch()
        log.info("first step done%s; peak resident memory per rank: %s GiB",
                 f" {since:.1f} s after launch" if since is not None else "",
                 ", ".join(f"{float(p):.2f}" for p in peaks))

    def _after_step(self, result: StepResult, metrics: MetricsLogger, started: float, waited: float) -> None:
        """Counts bad steps, logs metrics, saves on schedule, and stops after too many bad steps."""
        self.bad_in_row = self.bad_in_row + 1 if result.skipped else 0
        self.skipped += int(result.skipped)
        if result.skipped:
            log.warning("step %d: loss %s, grad norm %s: skipped (%d in a row, %d in all)", self.step,
                        result.loss, result.grad_norm, self.bad_in_row, self.skipped)
        self.window.update(result.counts, steps=1, elapsed=time.perf_counter() - started, waited=waited)
        if self.step % self.cfg.training.log_every == 0 or self.step == self.total_steps or result.skipped:
            metrics.log(self._record(result))
            self.window = Counter()
        if self.bad_in_row >= self.cfg.training.max_bad_steps:
            kept = self.last_saved or "none saved yet"
            raise MMTuneError(f"stopped at step {self.step}: {self.bad_in_row} non-finite losses in a row "
                              f"(training.max_bad_steps); last good checkpoint: {kept}")
        every = self.cfg.training.save_every
        if every and self.step % every == 0 and self.step < self.total_steps and not self.bad_in_row:
            self.save()

    def _run_hooks(self, metrics: MetricsLogger) -> None:
        """Runs the hooks due at this step on one unsharded copy of the model; logs what they return."""
        due = [hook for hook in self.parts.hooks if hook.due(self.step, self.total_steps)]
        if not due:
            return
        dtype = compute_dtype(self.cfg.training.dtype, self.env.device)
        model = unsharded_copy(self.model, self.parts.build_model, self.env.device, dtype)
        record: dict = {"step": self.step}
        for hook in due:
            record.update(hook(model, self.step))
        del model
        metrics.log_extra(record)

    def _record(self, result: StepResult) -> dict:
        """One line of ``metrics.jsonl``: this step's loss, the rates of every step since the last line."""
        w = self.window
        elapsed = w["elapsed"]
        record = {"step": self.step, "loss": result.loss, "lr": result.lr,
                  "grad_norm": result.grad_norm, "tokens_per_s": w["tokens"] / elapsed,
                  "supervised_tokens_per_s": w["supervised"] / elapsed, "samples_per_s": w["samples"] / elapsed,
                  "supervised_tokens": result.counts["supervised"], "step_time_s": elapsed / w["steps"],
                  "data_wait_fraction": w["waited"] / elapsed, "peak_memory_gb": peak_memory_gb(self.env.device),
                  "skipped": result.skipped, "skipped_total": self.skipped,
                  "token_spread": result.counts["tokens_max_rank"] * self.env.dp_size / max(result.counts["tokens"], 1)}
        peak = peak_flops(self.env.device)
        if peak and self.flops_per_token:
            record["mfu"] = self.flops_per_token * w["tokens"] / elapsed / (peak * self.env.world_size)
        return record

    # ------------------------------------------------------------------ checkpoints

    def _loader(self) -> BatchLoader:
        if self.parts.loader is None:
            raise MMTuneError("this trainer has no loader (RunParts.loader is None)")
        return self.parts.loader

    def states(self, read_rank: Optional[int] = None, saved_world: Optional[int] = None) -> dict[str, Any]:
        """The Stateful objects saved in a checkpoint besides model and optimizer (see
        :mod:`mmtune.training.state`): ``trainer`` and, per rank, ``loader`` and ``rng``; loading
        (``saved_world``: the saved run's world size) reads the RNG entry of rank ``read_rank`` (default:
        this rank) and the loader entries of every saved rank."""
        rank = self.env.rank
        read = rank if read_rank is None else read_rank
        states: dict[str, Any] = {"trainer": TrainerState(self, self.scheduler),
                                  "rng": RankState("rng", ckpt.rng_state, ckpt.set_rng_state, rank, read)}
        if self.parts.loader is not None:
            loader = self.parts.loader
            states["loader"] = GatheredState("loader", loader.state_dict, loader_restore(loader), rank, read,
                                             saved_world)
        return states

    def save(self) -> Path:
        """Writes a checkpoint of the current step (collective)."""
        info = {"world_size": self.env.world_size, "image_token_id": self.parts.image_token_id}

        def extras(path: Path) -> None:
            save_config(self.cfg, path / "config.yaml")
            if self.parts.write_extras is not None:
                self.parts.write_extras(path)

        self.last_saved = ckpt.save_checkpoint(self.out, self.step, self.model, self.optimizer, self.states(),
                                               info, extras, self.cfg.training.keep_last, self.env.is_main)
        return self.last_saved

    def load(self, path: Path) -> None:
        """Restores model, optimizer, scheduler, loader and RNG states from checkpoint ``path``: each rank
        its own loader and RNG states on the same world size, rank 0's on another."""
        saved_world = ckpt.read_info(path)["world_size"]
        read_rank = self.env.rank if saved_world == self.env.world_size else 0
        states = self.states(read_rank, saved_world)
        legacy = ckpt.load_checkpoint(path, self.model, self.optimizer, states)
        if legacy is not None:
            restore_legacy(states, legacy, read_rank)
        self.last_saved = path
        log.info("resumed from %s at step %d (saved on %d ranks)", path, self.step, saved_world)
