"""Resume benchmark (stream mode): time to the first batch after a resume, and the samples read out of
shards before it, at 10% and at 90% of an epoch of 1,000 small webdataset shards (10 samples each, one
loader process, ``data.shuffle_buffer`` 1000, 8 rows per micro-batch).

    .venv/bin/python scripts/bench_resume.py --work /tmp/resume [--src other/checkout/src]

``--src`` runs another checkout's loader on the same shards (the "before" figures of docs/benchmarks.md:
a checkout whose streams resume by replaying the epoch). The position is reached by iterating a loader
to it and taking its ``state_dict()``; the timed part is ``load_state_dict`` plus the first batch of a
fresh loader. Prints one JSON line per position, with the loader's rate while it ran to the position.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
SHARDS, PER_SHARD, MICRO = 1000, 10, 8


def write_shards(folder: Path) -> str:
    """1,000 shards of 10 captioned 8x8 JPEGs (once); returns their brace pattern."""
    from PIL import Image
    from webdataset import TarWriter

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 80, 40)).save(buf, format="JPEG")
    for s in range(SHARDS):
        path = folder / f"{s:05d}.tar"
        if not path.is_file():
            with TarWriter(str(path)) as sink:
                for n in range(s * PER_SHARD, (s + 1) * PER_SHARD):
                    sink.write({"__key__": f"{n:09d}", "jpg": buf.getvalue(), "txt": f"a photo number {n}".encode()})
    return str(folder / f"{{00000..{SHARDS - 1:05d}}}.tar")


def counting(read_shard: Callable, count: list[int]) -> Callable:
    """``read_shard`` adding the samples it reads to ``count[0]`` (tests/test_stream_positions.py uses it too)."""

    def reading(url: str, opts: Any) -> Iterator[Any]:
        for item in read_shard(url, opts):
            count[0] += 1
            yield item

    return reading


def measure(pattern: str) -> None:
    """Prints ``{"position", "samples_before_first_batch", "resume_s"}`` for 10% and 90% of the epoch."""
    import mmtune.data.sources as sources
    from mmtune.config import Config, SourceConfig
    from mmtune.data.images import ImageTransform
    from mmtune.data.loader import build_loader
    from mmtune.data.processor import Processor
    from mmtune.models.tokenizer import Tokenizer
    from mmtune.models.vision import ImageSettings

    read = [0]
    sources.read_shard = counting(sources.read_shard, read)
    cfg = Config()
    cfg.data.sources = [SourceConfig(path=pattern, kind="webdataset", num_samples=SHARDS * PER_SHARD)]
    cfg.data.template, cfg.data.batching, cfg.data.max_seq_len, cfg.data.num_workers = "caption", "padded", 32, 0
    cfg.training.micro_batch_size = MICRO
    tokenizer = Tokenizer.from_path(ROOT / "tests/assets/llama-tokenizer")
    settings = ImageSettings(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "center_crop", 10_000_000)
    processor = Processor(tokenizer, 4, "placeholder", ImageTransform.from_settings(settings))
    for share in (0.1, 0.9):
        first = build_loader(cfg, processor, rank=0, world_size=1, seed=0)
        batches = iter(first)
        started = time.perf_counter()
        for _ in range(int(share * SHARDS * PER_SHARD) // MICRO):
            next(batches)
        reach_s = time.perf_counter() - started
        state = first.state_dict()
        read[0] = 0
        started = time.perf_counter()
        resumed = build_loader(cfg, processor, rank=0, world_size=1, seed=0)
        resumed.load_state_dict(state)
        next(iter(resumed))
        print(json.dumps({"position": f"{int(share * 100)}%", "samples_before_first_batch": read[0],
                          "resume_s": round(time.perf_counter() - started, 2),
                          "samples_per_s_to_reach_it": round(share * SHARDS * PER_SHARD / reach_s)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the shards (kept between runs)")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the checkout's src folder to measure")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    pattern = write_shards(args.work / "shards")
    env = dict(os.environ, PYTHONPATH=str(args.src), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, __file__, "--work", str(args.work), "--measure", pattern], env=env, check=True)


if __name__ == "__main__":
    main()
