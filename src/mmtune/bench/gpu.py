"""``mmtune bench gpu``: the GPU check, one JSON + markdown report from one command on one H100/H200.

Three sections, each reusing a benchmark of its own:

* ``train``: a stage-2 step (:func:`~mmtune.bench.train.run_train_bench`, the ``packed`` side) of a
  LLaVA-1.5-7B-shaped model: Vicuna/LLaMA-2-7B decoder width, CLIP ViT-L/336 (frozen), mlp connector,
  bf16, packed rows of 2048 positions, activation checkpointing, with and without ``parallel.compile``.
  The decoder keeps the 7B width and takes as many of its 32 layers as :mod:`mmtune.planning` says fit
  the card with full-parameter AdamW state (all 32 on a 141 GB H200). Figures: tokens/s, MFU of the
  decoder FLOPs and with the tower's (forward only: it is frozen), peak memory next to the plan's.
* ``attention``: forward + backward of packed-row attention at a ~1B model's shape (TinyLlama 1.1B:
  32 heads, 4 KV heads, head size 64; rows of 2048 positions of about 10 samples each), every path of
  :mod:`mmtune.models.packed_attention`: time and the largest difference from the per-sample loop.
* ``decode``: :func:`~mmtune.bench.generate.run_generate_bench` on that ~1B decoder in bf16: mmtune's
  cached decoding next to transformers' ``generate`` on the same weights.

``--tiny`` runs the same pipeline on CPU at toy size in seconds; what needs CUDA (varlen, FlexAttention
with gradients, compile) is reported as skipped.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch

from mmtune.bench.attention import packed_sample_ids
from mmtune.bench.timing import interleaved_medians
from mmtune.config import Config, ModelConfig, load_config
from mmtune.errors import MMTuneError
from mmtune.planning import GB, Layout, Workload, count_parameters, estimate, tower_size

log = logging.getLogger(__name__)

NEEDS_CUDA = "skipped: needs CUDA"
TARGETS = {"mfu_decoder": 0.45, "peak_vs_plan": 0.10, "varlen_speedup_vs_loop": 3.0}

FULL = {"train_model": ["--model.preset", "llama2-7b", "--vision.preset", "clip-vit-l-336"],
        "train_data": ["--data.max_seq_len", "2048", "--data.num_workers", "4"],
        "small_model": dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn_hidden_dim=5632, vocab_size=32000,
                            max_seq_len=2048),
        "attention": dict(rows=4, length=2048, sample_len=200, repeats=5),
        "decode": dict(batch=8, prompt_len=128, new_tokens=64, repeats=3),
        "steps": (2, 4)}
TINY = {"train_model": ["--model.dim", "64", "--model.n_layers", "2", "--model.n_heads", "4", "--model.n_kv_heads",
                        "2", "--model.vocab_size", "512", "--model.max_seq_len", "256", "--vision.preset",
                        "debug-clip"],
        "train_data": ["--data.max_seq_len", "96", "--data.num_workers", "0"],
        "small_model": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=256),
        "attention": dict(rows=2, length=128, sample_len=12, repeats=1),
        "decode": dict(batch=2, prompt_len=8, new_tokens=4, repeats=1),
        "steps": (1, 1)}


def guarded(what: str, fn: Callable[[], dict], row: dict) -> dict:
    """``fn()``, or ``row`` with ``status: error: ...`` when it raises, so that one failing part (an OOM, a
    kernel missing on this card) leaves the rest of the report; the command then exits 1."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - recorded in the report and logged with its traceback
        log.exception("bench gpu: %s failed", what)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {**row, "status": f"error: {type(exc).__name__}: {first}"[:300]}


def require_device(tiny: bool) -> torch.device:
    """CUDA for the real check; the CPU for ``--tiny``. Without a GPU: one clear line (MMTuneError)."""
    if tiny:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MMTuneError("bench gpu needs a CUDA GPU and none is visible; "
                          "'mmtune bench gpu --tiny' runs the report pipeline on CPU")
    return torch.device("cuda")


def stage2_config(size: dict, layers: Optional[int], compile_blocks: bool) -> Config:
    """The stage-2 run: LLaVA-1.5 trainables, bf16 on GPU, one packed row per step, checkpointing."""
    overrides = size["train_model"] + size["train_data"] + [
        "--connector.kind", "mlp", "--trainable.vision", "frozen", "--trainable.connector", "full",
        "--trainable.llm", "full", "--training.micro_batch_size", "1", "--training.dtype", "auto",
        "--parallel.activation_checkpointing", "true", "--parallel.compile", str(compile_blocks).lower()]
    if layers is not None:
        overrides += ["--model.n_layers", str(layers)]
    return load_config(None, overrides)


def stage2_workload(cfg: Config, gpu_mem_gb: float) -> Workload:
    """``cfg`` as :mod:`mmtune.planning` sees it on one card of ``gpu_mem_gb`` GiB."""
    return Workload(model=cfg.model, vision=cfg.vision, connector=cfg.connector, trainable=cfg.trainable, gpus=1,
                    seq=cfg.data.max_seq_len, micro_batch=cfg.training.micro_batch_size, gpu_mem_gb=gpu_mem_gb)


def largest_fitting_layers(size: dict, gpu_mem_gb: float) -> tuple[int, float]:
    """The most decoder layers (of the shape's own count) whose run fits ``gpu_mem_gb`` by the plan, and
    the plan's per-GPU GiB for it (checkpointing, no tensor parallelism); ValueError when none fits."""
    full = stage2_config(size, None, False).model.n_layers
    for layers in range(full, 0, -1):
        work = stage2_workload(stage2_config(size, layers, False), gpu_mem_gb)
        planned = estimate(work, count_parameters(work), Layout(1, True))
        if planned.fits:
            return layers, planned.total
    raise ValueError(f"no LLaVA-shaped model fits {gpu_mem_gb:.0f} GiB")


def flops_split(cfg: Config) -> tuple[float, float]:
    """(decoder training FLOPs per token, tower + connector FLOPs per image): torchtitan's 6 x non-embedding
    parameters + attention for the decoder, 2 x parameters per image token for the frozen tower (forward
    only) and 6 x for the connector."""
    work = stage2_workload(cfg, 0.0)
    counts = count_parameters(work)
    m = cfg.model
    decoder = 6.0 * (counts.llm - m.vocab_size * m.dim) + 12.0 * m.n_layers * m.dim * cfg.data.max_seq_len
    image_tokens = tower_size(cfg.vision)[2]
    return decoder, (2.0 * counts.vision + 6.0 * counts.connector) * image_tokens


def train_row(cfg: Config, compiled: bool, planned_gb: float, device: torch.device, size: dict) -> dict:
    """One stage-2 measurement as a report row."""
    from mmtune.bench.train import run_train_bench
    from mmtune.training.metrics import peak_flops

    warmup, steps = size["steps"]
    result = run_train_bench(cfg, steps=steps, warmup=warmup, sides=["packed"], seed=0)[0]
    decoder, per_image = flops_split(cfg)
    peak = peak_flops(device)
    flops = decoder * result.tokens_per_s
    return {"compile": compiled, "layers": cfg.model.n_layers, "dim": cfg.model.dim,
            "tokens_per_s": result.tokens_per_s, "images_per_s": result.images_per_s,
            "step_time_s": result.step_time_s,
            "mfu_decoder": flops / peak if peak else None,
            "mfu_with_tower": (flops + per_image * result.images_per_s) / peak if peak else None,
            "peak_memory_gb": result.peak_memory_gb, "planned_gb": planned_gb,
            "peak_vs_plan": result.peak_memory_gb / planned_gb - 1.0, "loss": result.losses[-1]}


def train_section(size: dict, device: torch.device, tiny: bool) -> dict:
    """The stage-2 rows (compile off, then on) and the model the plan chose for the card."""
    card_gb = 80.0 if tiny else torch.cuda.get_device_properties(device).total_memory / GB
    layers_80gb, _ = largest_fitting_layers(FULL, 80.0)
    layers = None
    if not tiny:
        layers, _ = largest_fitting_layers(size, card_gb)
    rows = []
    for compiled in (False, True):
        cfg = stage2_config(size, layers, compiled)
        work = stage2_workload(cfg, card_gb)
        planned = estimate(work, count_parameters(work), Layout(1, True)).total
        if compiled and tiny:
            rows.append({"compile": True, "status": "skipped: compile of the blocks is measured on the GPU run"})
            continue
        rows.append(guarded(f"stage-2 step (compile={compiled})",
                            lambda: train_row(cfg, compiled, planned, device, size), {"compile": compiled}))
    return {"card_gb": card_gb, "layers_for_80gb_card": layers_80gb, "rows": rows}


def _qkv(size: dict, shape: dict, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    head = shape["dim"] // shape["n_heads"]
    return [torch.randn(size["rows"], heads, size["length"], head, generator=gen).to(device, dtype).requires_grad_()
            for heads in (shape["n_heads"], shape["n_kv_heads"], shape["n_kv_heads"])]


def attention_paths(ids: torch.Tensor) -> dict[str, Optional[Callable]]:
    """Each packed-attention path as ``(q, k, v) -> out``, planned once for ``ids`` as the decoder does per
    forward pass (FlexAttention compiled, as inside compiled blocks), or None where the path needs CUDA."""
    from mmtune.models.packed_attention import flex_packed_attention, packed_rows

    cuda = ids.device.type == "cuda"
    paths: dict[str, Optional[Callable]] = {name: packed_rows(ids, name).attend for name in ("loop", "masked")}
    paths["varlen"] = packed_rows(ids, "varlen").attend if cuda else None
    paths["flex"] = None
    if cuda:
        flex, block_mask = torch.compile(flex_packed_attention), packed_rows(ids, "flex").block_mask
        paths["flex"] = lambda q, k, v: flex(q, k, v, block_mask)
    return paths


def _forward_backward(fn: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, device: torch.device) -> None:
    fn(q, k, v).float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attention_section(size: dict, device: torch.device) -> dict:
    """Forward + backward time of each path and its largest output difference from the loop."""
    shape, bench = size["small_model"], size["attention"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ids = packed_sample_ids(bench["rows"], bench["length"], bench["sample_len"], random.Random(0)).to(device)
    q, k, v = _qkv(bench, shape, device, dtype)
    paths = attention_paths(ids)
    failed = {name: guarded(f"attention path {name}", lambda fn=fn: _forward_backward(fn, q, k, v, device) or {},
                            {"path": name}) for name, fn in paths.items() if fn is not None}
    failed = {name: row for name, row in failed.items() if row}
    runnable = {name: fn for name, fn in paths.items() if fn is not None and name not in failed}
    reference = runnable["loop"](q, k, v).detach()
    calls = [lambda fn=fn: _forward_backward(fn, q, k, v, device) for fn in runnable.values()]
    seconds = dict(zip(runnable, interleaved_medians(calls, bench["repeats"])))
    rows = []
    for name, fn in paths.items():
        if fn is None or name in failed:
            rows.append(failed.get(name, {"path": name, "status": NEEDS_CUDA}))
            continue
        diff = (fn(q, k, v).detach().float() - reference.float()).abs().max().item()
        rows.append({"path": name, "ms": seconds[name] * 1e3, "speedup_vs_loop": seconds["loop"] / seconds[name],
                     "max_abs_diff_vs_loop": diff})
    samples = float((ids.max(dim=1).values + 1).float().mean())
    return {"rows_x_length": [bench["rows"], bench["length"]], "samples_per_row": samples, "dtype": str(dtype),
            "paths": rows}


def decode_section(size: dict, device: torch.device) -> dict:
    """mmtune's decoding next to transformers' ``generate`` on the same ~1B weights."""
    from mmtune.bench.generate import run_generate_bench
    from mmtune.models.llama import Transformer

    torch.manual_seed(0)
    with torch.device(device):
        llm = Transformer(ModelConfig(**size["small_model"]))
    llm.init_weights()
    if device.type == "cuda":
        llm.to(torch.bfloat16)
    rows = guarded("decoding", lambda: {"rows": [asdict(r) for r in run_generate_bench(llm, **size["decode"])]},
                   {"rows": [{"name": "mmtune and transformers"}]})
    if "status" in rows:
        rows["rows"][0]["status"] = rows.pop("status")
    return {"batch": size["decode"]["batch"], **rows}


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |" for row in rows]
    return lines


def markdown(report: dict) -> str:
    """The report as markdown: the device, the targets, then one table per section."""
    train, attention, decode = report["train"], report["attention"], report["decode"]
    lines = [f"# mmtune bench gpu: {report['device']}", "",
             "Targets: " + ", ".join(f"{k} {v}" for k, v in report["targets"].items()), "",
             *([f"Failed parts: {len(report['errors'])} (status column; tracebacks in the log)", ""]
               if report["errors"] else []),
             f"## Stage-2 step ({train['card_gb']:.0f} GiB card; {train['layers_for_80gb_card']} of 32 "
             "LLaVA-1.5-7B decoder layers fit an 80 GB card)", "", *_table(train["rows"]), "",
             f"## Packed attention ({attention['rows_x_length'][0]} rows of {attention['rows_x_length'][1]}, "
             f"{attention['samples_per_row']:.1f} samples per row, {attention['dtype']})", "",
             *_table(attention["paths"]), "", f"## Decoding (batch {decode['batch']})", "", *_table(decode["rows"])]
    return "\n".join(lines) + "\n"


def run_gpu_bench(out_dir: Path, tiny: bool = False) -> dict:
    """Runs the three sections, writes ``gpu-report.json`` and ``gpu-report.md`` to ``out_dir``, returns
    the report (``errors``: the status of every part that failed)."""
    device = require_device(tiny)
    size = TINY if tiny else FULL
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (--tiny)"
    report = {"device": name, "tiny": tiny, "torch": torch.__version__, "targets": TARGETS,
              "train": train_section(size, device, tiny), "attention": attention_section(size, device),
              "decode": decode_section(size, device)}
    report["errors"] = [row["status"] for row in report["train"]["rows"] + report["attention"]["paths"]
                        + report["decode"]["rows"] if str(row.get("status", "")).startswith("error")]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu-report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "gpu-report.md").write_text(markdown(report))
    return report
