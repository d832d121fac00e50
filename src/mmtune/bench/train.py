"""Training benchmark: mmtune's trainer on packed rows and on padded batches, against a LLaVA-1.5-style
transformers pipeline, on the same synthetic Alpaca + LLaVA mixture, weights and hardware in one run.

Every side trains the same samples in the same steps: the mixture (:mod:`mmtune.bench.synthetic`) is
packed into rows of ``data.max_seq_len``, ``training.micro_batch_size`` rows make one optimizer step,
and the padded sides take exactly the samples of each packed step, one per row, padded to the step's
longest (LLaVA-1.5's batching). The three sides are

* ``mmtune packed``: :class:`~mmtune.training.trainer.Trainer` (FSDP2, AdamW + schedule, clipping) on
  the packed rows;
* ``mmtune padded``: the same trainer on the padded batches;
* ``transformers``: ``LlavaForConditionalGeneration`` (``LlamaForCausalLM`` for a text-only model)
  holding the same weights (:mod:`mmtune.models.adapters.hf_llava`), on the padded batches with an
  attention mask, its own loss (full logits, mean over the batch's targets), the same optimizer,
  schedule and clipping.

Because each step's loss is the sum over its targets divided by their count, all sides see the same
first-step loss (they diverge only by rounding afterwards). Images are JPEG bytes decoded and
transformed in ``data.num_workers`` DataLoader workers, as in training. All sides are built first (they
are in memory together) and their steps run interleaved, so that a change in the machine's load hits
every side alike. Figures per side: real (non-padding) tokens/s, supervised tokens/s, samples/s,
median step time, the share of step time spent waiting for data, the padding share, peak memory (its
parameters and optimizer state plus the largest rise within one of its steps: the CUDA allocator's peak
on GPU; on CPU, whose allocator keeps freed memory, the tensors autograd saved for the backward pass,
logits included) and, on a known GPU, MFU.
"""

from __future__ import annotations

import copy
import gc
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mmtune.bench.synthetic import MixtureSpec, synthetic_mixture, synthetic_photos
from mmtune.config import Config
from mmtune.data.batch import Batch
from mmtune.data.encode import EncodedSample
from mmtune.data.packing import Packer, Row, build_row, collate
from mmtune.errors import ConfigError

if TYPE_CHECKING:
    from mmtune.distributed.env import DistEnv

log = logging.getLogger(__name__)

SIDES: tuple[str, ...] = ("packed", "padded", "transformers")
PAD_ID = 0


@dataclass
class TrainBenchResult:
    """What one side measured over the timed steps."""

    name: str
    tokens_per_s: float
    supervised_tokens_per_s: float
    samples_per_s: float
    step_time_s: float
    data_wait_fraction: float
    padding_fraction: float
    peak_memory_gb: float
    mfu: Optional[float] = None
    images_per_s: float = 0.0
    losses: list[float] = field(default_factory=list)


@dataclass
class StepPlan:
    """The rows of every step, packed and padded (the same samples per step)."""

    packed: list[list[Row]]
    padded: list[list[Row]]


def mixture_spec(cfg: Config, image_token_id: int, num_image_tokens: int) -> MixtureSpec:
    """The synthetic mixture for ``cfg``: its vocabulary and row length, text lengths scaled by
    ``data.max_seq_len / 2048`` (LLaVA-1.5's context)."""
    return MixtureSpec(vocab_size=cfg.model.vocab_size, image_token_id=image_token_id,
                       num_image_tokens=num_image_tokens, max_seq_len=cfg.data.max_seq_len,
                       scale=cfg.data.max_seq_len / 2048)


def plan_steps(samples: Sequence[EncodedSample], max_seq_len: int, rows_per_step: int, n_steps: int) -> StepPlan:
    """Packs ``samples`` into rows and cuts ``n_steps`` steps of ``rows_per_step`` rows; the padded plan
    holds the same samples, one per row (ValueError when the samples fill fewer rows)."""
    rows = list(Packer(max_seq_len, PAD_ID, "packed").pack(samples))
    needed = rows_per_step * n_steps
    if len(rows) < needed + 1:  # the last, flushed rows are partly empty: never use them
        raise ValueError(f"{len(samples)} samples fill {len(rows)} rows; {needed} are needed")
    packed = [rows[i * rows_per_step:(i + 1) * rows_per_step] for i in range(n_steps)]
    by_ids = {tuple(s.input_ids.tolist()): s for s in samples}
    padded = [[build_row([by_ids[ids]], PAD_ID) for row in step for ids in _row_samples(row)] for step in packed]
    return StepPlan(packed, padded)


def _row_samples(row: Row) -> list[tuple[int, ...]]:
    """The token ids of each sample laid out in ``row``, in order."""
    out = []
    for sid in range(row.num_samples):
        out.append(tuple(row.input_ids[row.sample_ids == sid].tolist()))
    return out


def build_plan(spec: MixtureSpec, rows_per_step: int, n_steps: int, photos: list[bytes], seed: int) -> StepPlan:
    """Draws enough of the mixture for ``n_steps`` packed steps and plans them."""
    count = max(16, rows_per_step * n_steps * spec.max_seq_len // max(8, spec.num_image_tokens + 24))
    while True:
        samples = synthetic_mixture(spec, count, photos, seed)
        try:
            return plan_steps(samples, spec.max_seq_len, rows_per_step, n_steps)
        except ValueError:
            count *= 2


class _StepBatches(Dataset):
    """Step ``i`` -> the collated batch of its rows (images decoded here, in the worker)."""

    def __init__(self, steps: list[list[Row]], transform: Optional[Callable]):
        self.steps, self.transform = steps, transform

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index: int) -> Batch:
        return collate(self.steps[index], self.transform)


def step_loader(steps: list[list[Row]], transform: Optional[Callable], workers: int, device: torch.device) -> DataLoader:
    """A DataLoader yielding one collated batch per step from ``workers`` processes."""
    return DataLoader(_StepBatches(steps, transform), batch_size=None, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory_for(device), prefetch_factor=4 if workers else None)


def pin_memory_for(device: torch.device) -> bool:
    """Whether batches bound for ``device`` are staged in pinned memory (for asynchronous copies): CUDA only."""
    return device.type == "cuda"


def _reset_peak(device: torch.device) -> None:
    torch.cuda.reset_peak_memory_stats(device)


def _memory_gb(device: torch.device) -> tuple[float, float]:
    """(allocated now, peak since the last reset) of the CUDA allocator, in GiB."""
    return torch.cuda.memory_allocated(device) / 2**30, torch.cuda.max_memory_allocated(device) / 2**30


def state_gb(model: nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """GiB held between steps: parameters and optimizer state."""
    tensors = list(model.parameters()) + [v for state in optimizer.state.values() for v in state.values()
                                          if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Side:
    """One side of the comparison: its step function, data and between-step memory."""

    name: str
    step: Callable[[Batch], float]
    loader: DataLoader
    state_gb: Callable[[], float]
    totals: dict = field(default_factory=lambda: dict.fromkeys(
        ("tokens", "supervised", "samples", "padding", "images", "wait", "time", "transient"), 0.0))
    step_times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


class SavedBytes:
    """Counts the bytes autograd saves for the backward pass (each storage once): a step's activation
    memory, independent of the allocator (which on CPU keeps and reuses freed memory across sides)."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """Records ``tensor``'s storage and keeps the tensor as it is."""
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def gb(self) -> float:
        """GiB of distinct storages seen."""
        return sum(self.storages.values()) / 2**30


def _run_step(side: Side, batch: Batch, device: torch.device) -> float:
    """Runs one step; returns its memory: the allocator's peak rise on CUDA, saved activations on CPU."""
    if device.type == "cuda":
        _reset_peak(device)
        before, _ = _memory_gb(device)
        side.losses.append(side.step(batch))
        return _memory_gb(device)[1] - before
    saved = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        side.losses.append(side.step(batch))
    return saved.gb


def _timed_step(side: Side, batches: Iterator, device: torch.device, timed: bool) -> None:
    """One step of ``side``: data wait, step time and the step's memory above the state between steps."""
    _sync(device)
    started = time.perf_counter()
    batch = next(batches).to(device, non_blocking=True)
    waited = time.perf_counter() - started
    transient = _run_step(side, batch, device)
    _sync(device)
    elapsed = time.perf_counter() - started
    side.totals["transient"] = max(side.totals["transient"], transient)
    if not timed:
        return
    side.step_times.append(elapsed)
    for key in ("tokens", "supervised", "samples", "padding"):
        side.totals[key] += float(getattr(batch, f"num_{key}"))
    side.totals["images"] += 0.0 if batch.pixel_values is None else float(batch.pixel_values.shape[0])
    side.totals["wait"] += waited
    side.totals["time"] += elapsed


def time_sides(sides: list[Side], device: torch.device, warmup: int, flops_per_token: float,
               peak_flops: Optional[float]) -> list[TrainBenchResult]:
    """Runs the sides' steps interleaved (step 1 of every side, then step 2, ...), so that a change in
    the machine's load hits every side alike; the steps after ``warmup`` are timed. Peak memory is a
    side's parameters and optimizer state plus the largest rise of memory within one of its steps."""
    iterators = [iter(side.loader) for side in sides]
    for i in range(len(sides[0].loader)):
        for side, batches in zip(sides, iterators):
            _timed_step(side, batches, device, timed=i >= warmup)
    results = []
    for side in sides:
        t = side.totals
        seconds = max(t["time"], 1e-9)
        tokens_per_s = t["tokens"] / seconds
        mfu = flops_per_token * tokens_per_s / peak_flops if peak_flops and flops_per_token else None
        results.append(TrainBenchResult(
            side.name, tokens_per_s, t["supervised"] / seconds, t["samples"] / seconds,
            statistics.median(side.step_times), t["wait"] / seconds,
            t["padding"] / max(t["tokens"] + t["padding"], 1.0), side.state_gb() + t["transient"], mfu,
            t["images"] / seconds, side.losses))
    return results


def trainer_config(cfg: Config, steps: int, output_dir: str) -> Config:
    """``cfg`` for a benchmark trainer: ``steps`` steps of one micro-batch, fresh weights, no saving."""
    out = copy.deepcopy(cfg)
    out.training.max_steps = steps
    out.training.global_batch_size = out.training.micro_batch_size
    out.training.output_dir = output_dir
    out.training.init_from = None
    out.training.save_every = 0
    return out


def hf_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    """The padded batch as transformers takes it: an attention mask and unshifted labels (transformers
    shifts them itself: ``labels[t + 1]`` is the target of position ``t``)."""
    labels = torch.full_like(batch.labels, -100)
    labels[:, 1:] = batch.labels[:, :-1]
    inputs = {"input_ids": batch.input_ids, "attention_mask": (batch.sample_ids >= 0).long(), "labels": labels}
    if batch.pixel_values is not None:
        inputs["pixel_values"] = batch.pixel_values
    return inputs


def transformers_model(model: nn.Module) -> nn.Module:
    """``LlavaForConditionalGeneration`` (or ``LlamaForCausalLM`` without a tower) with ``model``'s weights."""
    from mmtune.bench.generate import hf_causal_lm

    if model.vision is None:
        return hf_causal_lm(model.llm)
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from mmtune.models.adapters.hf_llava import to_llava_config, to_llava_state_dict

    values = to_llava_config(model.model_cfg, model.vision_cfg, model.connector_cfg, model.vision.hf_config(),
                             model.image_token_id)
    values = {k: v for k, v in values.items() if k not in ("model_type", "architectures")}
    hf = LlavaForConditionalGeneration(LlavaConfig(**values))
    missing, unexpected = hf.load_state_dict(to_llava_state_dict(model.state_dict(), model.model_cfg), strict=False)
    assert not missing and not unexpected, f"Llava weights: missing {missing}, unexpected {unexpected}"
    return hf


def _set_trainable(hf: nn.Module, cfg: Config) -> None:
    """Applies ``cfg.trainable`` to a transformers model; frozen parts go to eval mode."""
    hf.train()
    inner = getattr(hf, "model", None)
    parts = {"llm": [hf]}
    if hasattr(inner, "vision_tower"):
        parts = {"vision": [inner.vision_tower], "connector": [inner.multi_modal_projector],
                 "llm": [inner.language_model, hf.lm_head]}
    for name, modules in parts.items():
        train = getattr(cfg.trainable, name) == "full"
        for module in modules:
            module.requires_grad_(train)
            if not train:
                module.eval()


def transformers_step(hf: nn.Module, cfg: Config, device: torch.device,
                      total_steps: int) -> tuple[Callable[[Batch], float], torch.optim.Optimizer]:
    """One optimizer step of the transformers side (and its optimizer): its own loss, the trainer's
    AdamW, schedule and clipping, bf16 autocast when the run computes in bf16."""
    from mmtune.distributed.parallelize import compute_dtype
    from mmtune.training.optim import build_optimizer, build_scheduler, clip_grad_norm

    _set_trainable(hf, cfg)
    optimizer = build_optimizer(hf, cfg.training, device)
    scheduler = build_scheduler(optimizer, cfg.training, total_steps)
    params = [p for p in hf.parameters() if p.requires_grad]
    bf16 = compute_dtype(cfg.training.dtype, device) == torch.bfloat16

    def step(batch: Batch) -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = hf(**hf_inputs(batch)).loss
        loss.backward()
        clip_grad_norm(params, cfg.training.clip_grad)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, optimizer


def _check(cfg: Config, steps: int, warmup: int, sides: Sequence[str]) -> None:
    if steps < 1 or warmup < 0:
        raise ConfigError("bench train --steps/--warmup", (steps, warmup), "steps >= 1 and warmup >= 0")
    unknown = [s for s in sides if s not in SIDES]
    if unknown or not sides:
        raise ConfigError("bench train --sides", list(sides), "some of " + ", ".join(SIDES))
    if cfg.vision.kind == "blip2" and "transformers" in sides:
        raise ConfigError("vision.kind", "blip2", "clip or siglip with the mlp connector for the transformers "
                          "Llava baseline (or leave the transformers side out)")


def make_side(side: str, cfg: Config, env: "DistEnv", source: nn.Module, total: int, loader: DataLoader) -> Side:
    """The trainer (``packed``/``padded``) or the transformers twin of ``source`` as a :class:`Side`."""
    from mmtune.models.vlm import build_model
    from mmtune.training.trainer import RunParts, Trainer

    if side == "transformers":
        hf = transformers_model(source).to(env.device)
        step, optimizer = transformers_step(hf, cfg, env.device, total)
        kind = "Llava" if source.vision is not None else "Llama"
        return Side(f"transformers {kind}, padded", step, loader, lambda: state_gb(hf, optimizer))
    image_token_id = source.image_token_id
    parts = RunParts(build_model=lambda device: build_model(cfg, image_token_id, device=device), loader=None,
                     image_token_id=image_token_id)
    trainer = Trainer(cfg, env, parts)
    return Side(f"mmtune {side}", lambda batch: trainer.train_step([batch]).loss, loader,
                lambda: state_gb(trainer.model, trainer.optimizer))


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_train_bench(cfg: Config, *, steps: int = 8, warmup: int = 2, sides: Sequence[str] = SIDES,
                    seed: int = 0) -> list[TrainBenchResult]:
    """Every side of ``sides`` on the same planned steps (see the module docstring), in one process."""
    from mmtune.data.images import ImageTransform
    from mmtune.distributed.env import init_distributed, shutdown
    from mmtune.models.vlm import build_model
    from mmtune.training.metrics import flops_per_token, peak_flops

    _check(cfg, steps, warmup, sides)
    owned = not torch.distributed.is_initialized()
    env = init_distributed(cfg.parallel.tp)
    try:
        if env.world_size != 1:
            raise ConfigError("bench train", f"{env.world_size} processes", "one process (no torchrun)")
        torch.manual_seed(cfg.training.seed)  # the trainer builds its weights from the same seed
        # Weights only for the transformers twin (it embeds the image id); else shapes suffice (meta device).
        source = build_model(cfg, cfg.model.vocab_size - 1, device="cpu" if "transformers" in sides else "meta")
        transform = photos = None
        if source.vision is not None:
            transform = ImageTransform.from_vision(cfg.vision)
            photos = synthetic_photos(16, seed=seed)
        plan = build_plan(mixture_spec(cfg, source.image_token_id, source.num_image_tokens),
                          cfg.training.micro_batch_size, warmup + steps, photos or [], seed)
        fpt = flops_per_token(source, cfg.data.max_seq_len, cfg.model.n_layers, cfg.model.dim)
        with tempfile.TemporaryDirectory() as out:
            tcfg = trainer_config(cfg, warmup + steps, out)
            built = [make_side(side, tcfg, env, source, warmup + steps,
                               step_loader(plan.packed if side == "packed" else plan.padded, transform,
                                           cfg.data.num_workers, env.device)) for side in sides]
            del source
            log.info("bench train: %s, %d steps each (%d warm-up), interleaved",
                     ", ".join(s.name for s in built), warmup + steps, warmup)
            results = time_sides(built, env.device, warmup, fpt, peak_flops(env.device))
            del built
            _release(env.device)
        return results
    finally:
        if owned:
            shutdown({})
