"""Memory of a loader worker for a large JSONL source: a caption manifest of 1,000,000 records (about 120 MB)
opened as a source, then read by a forked process as a DataLoader worker would; and the speed of
``mmtune data check`` on an Alpaca JSONL file.

    .venv/bin/python scripts/bench_data_memory.py --work /tmp/datamem [--records 1000000] [--format jsonl|json|parquet]
        [--src other/checkout/src]
    .venv/bin/python scripts/bench_data_memory.py --work /tmp/datamem --check 100000 [--processes 2]

``--src`` runs another checkout's code on the same file (the "before" figures of docs/benchmarks.md). It
prints the resident memory (VmRSS) of the process before and after opening the source, and of a forked
child after it read 10,000 random records (its own memory, ``Private_Dirty`` of smaps_rollup: pages it
wrote or copied; clean pages of a memory-mapped file are the page cache's, shared), as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

MEASURE = r"""
import json, os, random, sys, time
def rss():
    status = open('/proc/self/status').read()
    return int(status.split('VmRSS:')[1].split()[0]) // 1024
def private():
    text = open('/proc/self/smaps_rollup').read()
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith('Private_Dirty')) // 1024
from mmtune.config import SourceConfig
from mmtune.data.sources import open_source
before = rss()
start = time.perf_counter()
options = {'image_key': 'jpg'} if sys.argv[1].endswith('.parquet') else {}
source = open_source(SourceConfig(path=sys.argv[1], kind='manifest', options=options))
opened_s = time.perf_counter() - start
opened = rss()
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    rng = random.Random(0)
    for _ in range(10000):
        source.record(rng.randrange(len(source)))
    os.write(write, json.dumps([rss(), private()]).encode())
    os._exit(0)
os.waitpid(pid, 0)
child = json.loads(os.read(read, 1000))
print(json.dumps({'records': len(source), 'rss_before_mib': before, 'rss_opened_mib': opened,
                  'open_s': round(opened_s, 1), 'worker_rss_mib': child[0], 'worker_private_mib': child[1]}))
"""


def write_manifest(path: Path, records: int) -> None:
    """``records`` caption entries, one JSON object a line, one JSON list for a ``.json`` path (image paths
    need not exist: not decoded here), or a parquet table of image bytes and captions."""
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pixels = bytes(range(256)) * 4  # 1 KiB of stand-in image bytes per row
        pq.write_table(pa.table({"jpg": [pixels] * records, "caption": [f"a photo number {i} of a shape"
                                                                          for i in range(records)]}), path)
        return
    as_list = path.suffix == ".json"
    with open(path, "w") as f:
        f.write("[" if as_list else "")
        for i in range(records):
            entry = json.dumps({"image": f"/data/images/{i:08d}.jpg", "caption": f"a photo number {i} of a shape "
                                "on a plain background, seen from the side"})
            f.write((", " if i else "") + entry if as_list else entry + "\n")
        f.write("]" if as_list else "")


def bench_check(work: Path, records: int, processes: int, src: str) -> None:
    """``mmtune data check`` on ``records`` Alpaca entries (text only; the tests' LLaMA tokenizer)."""
    root = Path(__file__).resolve().parents[1]
    data = work / f"alpaca-{records}.jsonl"
    if not data.is_file():
        with open(data, "w") as f:
            for i in range(records):
                f.write(json.dumps({"instruction": f"Describe shape number {i} in a sentence.", "input": "",
                                    "output": f"Shape {i} is a small red square on a plain white background."}) + "\n")
    config = work / "check.yaml"
    config.write_text(f"model: {{preset: debug}}\nvision: {{preset: debug-clip}}\n"
                      f"tokenizer: {{path: {root}/tests/assets/llama-tokenizer}}\n"
                      f"data: {{template: alpaca, max_seq_len: 256, sources: [{{path: {data}}}]}}\n")
    argv = [sys.executable, "-m", "mmtune", "data", "check", str(config), "--processes", str(processes), "--no-progress"]
    out = subprocess.run(argv, env=dict(os.environ, PYTHONPATH=src, COLUMNS="200"), capture_output=True, text=True)
    print(" ".join(argv[1:]))
    print("\n".join(line for line in out.stdout.splitlines() if "samples/s" in line or line.startswith("ok")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--format", choices=("jsonl", "json", "parquet"), default="jsonl",
                        help="JSONL, one JSON list, or parquet with 1 KiB of image bytes per row")
    parser.add_argument("--check", type=int, default=0, metavar="N", help="time mmtune data check on N records")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.check:
        bench_check(args.work, args.check, args.processes, args.src)
        return
    manifest = args.work / f"captions-{args.records}.{args.format}"
    write_manifest(manifest, args.records)
    env = dict(os.environ, PYTHONPATH=args.src)
    out = subprocess.run([sys.executable, "-c", MEASURE, str(manifest)], env=env, check=True, capture_output=True,
                         text=True)
    print(json.dumps({"file_mib": manifest.stat().st_size // 2**20, "src": args.src,
                      **json.loads(out.stdout.strip().splitlines()[-1])}))


if __name__ == "__main__":
    main()
