"""Typed configuration: dataclasses, YAML presets, dotted overrides, one-line errors.

Every field carries an attribute docstring (the string right below it); ``field_docs`` reads them
back so ``mmtune config --fields`` and the docs can show them. A YAML file maps section names to
fields; a section may name a ``preset`` whose values fill in first, and a file may ``inherit`` another
file (relative paths resolve against the inheriting file). Command-line overrides come last:
``--training.lr 1e-4`` or ``--training.lr=1e-4``.

Any bad value raises :class:`mmtune.errors.ConfigError`, which names the field, the value and what
is allowed; the CLI prints it as one line and exits with code 2.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from mmtune.config_values import build, hints, merge, parse_overrides, read_yaml
from mmtune.errors import ConfigError

Part = Literal["frozen", "full"]
EXHAUSTED: tuple[str, ...] = ("stop", "restart")
"""The values of ``SourceConfig.exhausted``."""
ImagePosition = Literal["after_bos", "placeholder"]
"""Where an image's run of tokens sits in the text: right after BOS, or where the text has ``<image>``."""


@dataclass
class RopeScaling:
    """Llama-3 style RoPE frequency scaling."""

    factor: float = 8.0
    """How much longer than the original context the scaled rope reaches."""
    low_freq_factor: float = 1.0
    """Wavelengths above original_max_position_embeddings / low_freq_factor are divided by factor."""
    high_freq_factor: float = 4.0
    """Wavelengths below original_max_position_embeddings / high_freq_factor are left unchanged."""
    original_max_position_embeddings: int = 8192
    """The context length the base model was pretrained with."""


@dataclass
class ModelConfig:
    """The LLaMA-family decoder. Parameter names follow Meta's release."""

    preset: Optional[str] = None
    """Named size to start from (debug, llama2-7b, llama2-13b, llama2-70b, llama3-8b, mistral-7b)."""
    dim: int = 64
    """Hidden size."""
    n_layers: int = 2
    """Number of decoder blocks."""
    n_heads: int = 4
    """Number of attention (query) heads."""
    n_kv_heads: Optional[int] = None
    """Number of key/value heads for grouped-query attention; None means n_heads."""
    vocab_size: int = 32064
    """Rows of the embedding and output matrices; at least the tokenizer's size."""
    multiple_of: int = 32
    """The SwiGLU hidden size is rounded up to a multiple of this (Meta's rule)."""
    ffn_dim_multiplier: Optional[float] = None
    """Scales the SwiGLU hidden size before rounding (Meta's params.json field)."""
    ffn_hidden_dim: Optional[int] = None
    """Explicit SwiGLU hidden size; overrides the Meta rule when set (Hugging Face intermediate_size)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rope_scaling: Optional[RopeScaling] = None
    """Llama-3 rope scaling; None for plain RoPE."""
    max_seq_len: int = 2048
    """Longest sequence the RoPE tables and KV caches are built for."""
    qkv_bias: bool = False
    """Add biases to wq/wk/wv (Qwen2 style)."""
    tie_embeddings: bool = False
    """Share the output matrix with the token embedding."""

    def check(self, path: str) -> None:
        _positive(self, path, "dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "max_seq_len")
        if self.dim % self.n_heads:
            raise ConfigError(f"{path}.n_heads", self.n_heads, f"a divisor of dim={self.dim}")
        kv = self.n_kv_heads or self.n_heads
        if kv <= 0 or self.n_heads % kv:
            raise ConfigError(f"{path}.n_kv_heads", self.n_kv_heads, f"a divisor of n_heads={self.n_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ConfigError(f"{path}.n_heads", self.n_heads, "a head size (dim / n_heads) that is even")


@dataclass
class VisionConfig:
    """The image encoder, built with transformers from a local directory or from a config."""

    preset: Optional[str] = None
    """Named tower (blip2-vitg-qformer, clip-vit-l-336, siglip-so400m, debug-clip, debug-siglip, debug-blip2)."""
    kind: Literal["none", "clip", "siglip", "blip2"] = "none"
    """Tower family; none builds a text-only model."""
    path: Optional[str] = None
    """Local directory of a transformers checkpoint to load weights from; None initialises randomly."""
    hf_config: dict = field(default_factory=dict)
    """transformers config values for a random init (for blip2: vision_config, qformer_config, num_query_tokens)."""
    feature_layer: int = -2
    """Which hidden state of a CLIP/SigLIP tower feeds the connector (-2 is the penultimate, as LLaVA-1.5)."""
    image_size: Optional[int] = None
    """Input resolution; None takes it from the tower config."""
    image_mean: Optional[list[float]] = None
    """Per-channel normalisation mean; None takes the tower's processor values."""
    image_std: Optional[list[float]] = None
    """Per-channel normalisation std; None takes the tower's processor values."""
    resize: Literal["center_crop", "pad", "resize"] = "center_crop"
    """How an image becomes square: short side + center crop, pad to square with the mean colour, or stretch."""
    max_image_pixels: int = 64_000_000
    """Images with more pixels than this are refused (decompression-bomb guard)."""

    def check(self, path: str) -> None:
        _positive(self, path, "max_image_pixels")
        if self.image_size is not None and self.image_size <= 0:
            raise ConfigError(f"{path}.image_size", self.image_size, "a positive integer or null")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if value is not None and len(value) != 3:
                raise ConfigError(f"{path}.{name}", value, "three numbers (R, G, B) or null")


@dataclass
class ConnectorConfig:
    """What turns vision features into decoder embeddings."""

    kind: Literal["mlp", "qformer"] = "mlp"
    """mlp: LLaVA-1.5 Linear-GELU-Linear at <image>; qformer: LLaMA2-Accessory's Linear+LayerNorm with boundary
    tokens after BOS."""
    hidden_dim: Optional[int] = None
    """Inner width of the mlp connector; None uses the decoder's dim."""
    merge: int = 1
    """mlp only: concatenate each merge x merge block of neighbouring patch features into one image token
    before the MLP (as Qwen2-VL's patch merger), so an image takes merge^2 times fewer tokens; 1 is
    LLaVA-1.5's one token per patch. Must divide the tower's patch grid side."""

    @property
    def image_position(self) -> ImagePosition:
        """``after_bos`` for qformer (LLaMA2-Accessory puts the image right after BOS), ``placeholder``
        for mlp (LLaVA puts it where the text has ``<image>``)."""
        return "after_bos" if self.kind == "qformer" else "placeholder"

    def check(self, path: str) -> None:
        _positive(self, path, "merge")
        if self.merge > 1 and self.kind != "mlp":
            raise ConfigError(f"{path}.merge", self.merge, "1 for the qformer connector (it merges nothing)")


@dataclass
class TrainableConfig:
    """Which parts of the model train; frozen parts are left out of the optimizer and kept in eval mode."""

    vision: Part = "frozen"
    """The vision tower (and Q-Former)."""
    connector: Part = "full"
    """The connector (projection and image boundary tokens)."""
    llm: Part = "full"
    """The language model."""


@dataclass
class TokenizerConfig:
    """The tokenizer; <image> is added as a special token (padding reuses unk or eos, never supervised)."""

    path: Optional[str] = None
    """Directory with tokenizer.json / tokenizer.model, or a tokenizer.model file."""


@dataclass
class SourceConfig:
    """One dataset in a mixture."""

    path: str = ""
    """File, brace pattern (shards/{00000..00009}.tar), glob, or URL."""
    kind: Literal["auto", "webdataset", "manifest", "alpaca", "llava"] = "auto"
    """Format; auto picks by extension and content."""
    name: Optional[str] = None
    """Name used in logs and counts; defaults to the file name."""
    weight: float = 1.0
    """Relative sampling weight in the mixture. Map mode: each epoch draws round(weight * size) of the
    source's entries. Stream mode: the source supplies weight / (sum of weights) of the samples."""
    template: Optional[str] = None
    """Prompt template for this source; None uses data.template."""
    image_root: Optional[str] = None
    """Directory that relative image paths resolve against; None uses data.image_root."""
    options: dict = field(default_factory=dict)
    """Per-source options (caption_key, image_key, prefix, ...)."""
    num_samples: Optional[int] = None
    """Webdataset shards only: samples in one epoch of this source; None sums the "successes" of the
    {shard}_stats.json files img2dataset writes next to the shards."""
    exhausted: str = "stop"
    """Stream mode: what happens when this source runs out. stop: the run's epoch ends; restart: the
    source starts its own next epoch (counted per source) and the run goes on. Map mode ignores it."""

    def check(self, path: str) -> None:
        if self.exhausted not in EXHAUSTED:
            raise ConfigError(f"{path}.exhausted", self.exhausted, "stop or restart")
        if not self.path:
            raise ConfigError(f"{path}.path", self.path, "a file, pattern or URL")
        if self.weight <= 0:
            raise ConfigError(f"{path}.weight", self.weight, "a positive number")
        if self.num_samples is not None and self.num_samples <= 0:
            raise ConfigError(f"{path}.num_samples", self.num_samples, "a positive integer or null")


@dataclass
class DataConfig:
    """Where samples come from and how they become token rows."""

    sources: list[SourceConfig] = field(default_factory=list)
    """The datasets of this stage."""
    mixture: Optional[str] = None
    """A YAML file listing sources (same fields as data.sources); added to sources."""
    template: str = "alpaca"
    """Default prompt template (alpaca, caption, plain, llava_v1, llama2_chat, none)."""
    system_prompt: Optional[str] = None
    """Replaces the template's default system prompt when set."""
    image_root: Optional[str] = None
    """Default directory for relative image paths."""
    max_seq_len: int = 512
    """Tokens per row, image positions included."""
    batching: Literal["packed", "grouped", "padded"] = "packed"
    """packed: several samples per row, attention kept apart; grouped: rows of similar length; padded: one sample per row."""
    overflow: Literal["truncate", "skip"] = "truncate"
    """What happens to a sample longer than max_seq_len: cut in its text, or skipped; either is counted."""
    max_bad_fraction: float = 0.01
    """Abort when more than this fraction of records of a source is unreadable."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 loads in the training process)."""
    shuffle_buffer: int = 1000
    """Samples held for shuffling streamed shards."""
    balance: bool = False
    """Map mode: split each group of ranks x micro_batch_size rows over the ranks by cost (tokens plus
    image_cost per image) instead of in order; the rows of every step stay those of one rank."""
    image_cost: int = 0
    """With balance: the extra cost of one image, in tokens (the vision tower's work), on top of its positions."""
    cache_dir: Optional[str] = None
    """Where map mode keeps the lengths of every entry it plans rows from (computed once per data, settings
    and tokenizer); null: $XDG_CACHE_HOME/mmtune/lengths (~/.cache/mmtune/lengths)."""
    log_samples: bool = False
    """Each rank appends one JSON line per optimizer step to samples/rank{R}.jsonl in the run directory:
    the step, the epoch and the keys of the samples it trained on (docs/data.md)."""

    def check(self, path: str) -> None:
        _positive(self, path, "max_seq_len")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"{path}.max_bad_fraction", self.max_bad_fraction, "a number in [0, 1]")
        if self.num_workers < 0:
            raise ConfigError(f"{path}.num_workers", self.num_workers, "0 or more")
        if self.image_cost < 0:
            raise ConfigError(f"{path}.image_cost", self.image_cost, "0 or more")
        for i, source in enumerate(self.sources):
            source.check(f"{path}.sources[{i}]")


EvalTask = Literal["vqav2", "textvqa", "gqa", "pope", "mmbench", "scienceqa", "coco-caption", "caption", "vqa"]
"""What ``training.eval`` (and ``mmtune eval --task``) can evaluate: a standard benchmark from its official
files, or the synthetic world's captions / questions (docs/evaluation.md)."""


@dataclass
class EvalTaskConfig:
    """One evaluation run during training: a benchmark, its files and when to run it."""

    task: EvalTask = "vqa"
    """The benchmark (vqav2, textvqa, gqa, pope, mmbench, scienceqa, coco-caption) or synthetic task (caption, vqa)."""
    data: list[str] = field(default_factory=list)
    """The question file(s), as mmtune eval --data (POPE: one per split)."""
    annotations: Optional[str] = None
    """VQAv2's annotations JSON; ScienceQA's pid_splits.json."""
    image_root: Optional[str] = None
    """The image folder (default: the question file's folder)."""
    split: Optional[str] = None
    """ScienceQA and Karpathy COCO: the split to read (default test)."""
    prompt: Optional[str] = None
    """The instruction after each question (default: LLaVA-1.5's for the benchmark)."""
    limit: Optional[int] = 500
    """Evaluate the first N questions only (null: all of them)."""
    every: int = 0
    """Evaluate every N optimizer steps (0: only at the end); always at the end too."""
    batch_size: int = 16
    """Prompts decoded together on each rank."""
    max_new_tokens: Optional[int] = None
    """Longest answer (default: 16 for short answers and letters, 64 for captions)."""

    def check(self, path: str) -> None:
        if not self.data:
            raise ConfigError(f"{path}.data", self.data, "at least one question file")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"{path}.limit", self.limit, "a positive integer or null")
        if self.every < 0:
            raise ConfigError(f"{path}.every", self.every, "0 or more")
        _positive(self, path, "batch_size")
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise ConfigError(f"{path}.max_new_tokens", self.max_new_tokens, "a positive integer or null")


@dataclass
class TrainingConfig:
    """Optimisation, schedule, checkpoints and logging."""

    output_dir: str = "runs/debug"
    """Run directory: checkpoints, metrics.jsonl, TensorBoard events, the resolved config."""
    init_from: Optional[str] = None
    """Weights to start from: a saved-model directory, a training checkpoint, or Meta / Hugging Face weights."""
    epochs: float = 1.0
    """Passes over the data (fractions allowed); ignored when max_steps is set."""
    max_steps: Optional[int] = None
    """Optimizer steps to run; overrides epochs."""
    global_batch_size: int = 8
    """Rows per optimizer step over all ranks."""
    micro_batch_size: int = 2
    """Rows per forward pass on one rank; accumulation = global / (micro * ranks)."""
    lr: float = 3e-5
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of the cosine decay."""
    warmup_fraction: float = 0.03
    """Share of all steps spent in linear warm-up from 0."""
    weight_decay: float = 0.0
    """AdamW weight decay (never applied to norms, biases and image boundary tokens)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    clip_grad: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """Parameter dtype in compute: auto is bf16 on GPU and fp32 on CPU; gradients reduce in fp32."""
    seed: int = 0
    """Seed for weights init, data order and augmentation."""
    save_every: int = 0
    """Save a checkpoint every N optimizer steps (0: only at the end)."""
    keep_last: int = 2
    """How many checkpoints to keep."""
    log_every: int = 1
    """Log metrics every N optimizer steps."""
    max_bad_steps: int = 3
    """Stop after this many non-finite losses in a row (each one is skipped and counted)."""
    eval: list[EvalTaskConfig] = field(default_factory=list)
    """Benchmarks evaluated during training (each with its files, limit and every); the model answers
    with data.template and data.system_prompt; metrics go to metrics.jsonl and TensorBoard (eval/...)."""

    def check(self, path: str) -> None:
        _positive(self, path, "global_batch_size", "micro_batch_size", "log_every", "keep_last", "max_bad_steps")
        if self.lr <= 0:
            raise ConfigError(f"{path}.lr", self.lr, "a positive number")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"{path}.min_lr", self.min_lr, f"a number in [0, lr={self.lr}]")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"{path}.warmup_fraction", self.warmup_fraction, "a number in [0, 1)")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"{path}.max_steps", self.max_steps, "a positive integer or null")
        if self.epochs <= 0:
            raise ConfigError(f"{path}.epochs", self.epochs, "a positive number")
        if self.global_batch_size % self.micro_batch_size:
            raise ConfigError(f"{path}.global_batch_size", self.global_batch_size,
                              f"a multiple of micro_batch_size={self.micro_batch_size}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{path}.betas", self.betas, "two numbers in [0, 1)")
        for name in ("weight_decay", "clip_grad", "save_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}", getattr(self, name), "0 or more")
        for i, task in enumerate(self.eval):
            task.check(f"{path}.eval[{i}]")


@dataclass
class ParallelConfig:
    """How the model is spread over devices."""

    tp: int = 1
    """Tensor-parallel degree; the remaining ranks shard with FSDP2."""
    activation_checkpointing: bool = False
    """Recompute each decoder block in the backward pass instead of storing its activations."""
    compile: bool = False
    """torch.compile each decoder block."""
    reshard_after_forward: bool = True
    """FSDP2: free gathered parameters after forward (ZeRO-3); false keeps them to backward (ZeRO-2)."""
    cpu_threads: int = 0
    """Intra-op threads per rank on a CPU; 0 picks: the node's cores shared among its ranks, less one
    per loader worker (OMP_NUM_THREADS, when set, is kept instead)."""

    def check(self, path: str) -> None:
        _positive(self, path, "tp")
        if self.cpu_threads < 0:
            raise ConfigError(f"{path}.cpu_threads", self.cpu_threads, "0 (automatic) or more")


@dataclass
class Config:
    """A whole run: model parts, data and training."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The language model."""
    vision: VisionConfig = field(default_factory=VisionConfig)
    """The vision tower."""
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    """The connector between tower and language model."""
    trainable: TrainableConfig = field(default_factory=TrainableConfig)
    """Which parts train."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """The tokenizer."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    """Optimisation and checkpoints."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Distribution over devices."""

    def check(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "check"):
                section.check(f.name)
        if self.vision.kind == "none" and self.trainable.vision == "full":
            raise ConfigError("trainable.vision", "full", "frozen when vision.kind is none")


def _positive(obj: Any, path: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None or value <= 0:
            raise ConfigError(f"{path}.{name}", value, "a positive integer")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Resolves a YAML file plus dotted overrides into a checked :class:`Config`."""
    data = read_yaml(path) if path else {}
    if overrides:
        data = merge(data, parse_overrides(overrides), whole_free_form=False)
    for key, value in data.items():
        if not isinstance(value, dict) and key in hints(Config):
            raise ConfigError(key, value, "a mapping of fields")
    cfg = build(Config, data)
    cfg.check()
    return cfg


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def save_config(cfg: Any, path: str | Path) -> None:
    """Writes the resolved config as YAML (what ``load_config`` reads back)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass, by field name."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = nxt.value.value.strip()
    return docs


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, doc) for every field, recursing into sections."""
    rows = []
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((name, repr(default), docs.get(f.name, "")))
    return rows
