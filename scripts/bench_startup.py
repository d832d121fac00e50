"""Start-up benchmark: peak resident memory of every rank and time to the first step, for a ~1B decoder
(dim 2048, 16 layers, vocabulary 32000: 3.5 GiB of fp32 weights) started from a saved model on 2 CPU
ranks, as a frozen-LLM stage 1 (new connector) and as a stage 2 (full LLM).

    .venv/bin/python scripts/bench_startup.py --work /tmp/startup [--src other/checkout/src] [--stage 1|2]

``--src`` runs another checkout's code on the same files (the "before" figures of docs/benchmarks.md).
Each rank runs under a small wrapper that prints its peak resident memory (``ru_maxrss``) when it exits;
the run is one optimizer step plus the final checkpoint, so the peak covers start-up, the first step and
one save. ``wall_s`` is launch to exit (the save included); code that logs it (``first step done ... s after
launch``) also gives ``first_step_s`` and every rank's peak at the end of the first step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = ("import atexit, resource, runpy, sys, os\n"
           "atexit.register(lambda: print(f\"PEAK_RSS rank={os.environ.get('RANK')} "
           "kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\", file=sys.stderr, flush=True))\n"
           "sys.argv = ['mmtune'] + sys.argv[1:]\n"
           "runpy.run_module('mmtune', run_name='__main__')\n")


def write_inputs(work: Path) -> None:
    """The saved ~1B text-only model, a tiny CLIP tower directory and a synthetic world (once)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from mmtune.config import ConnectorConfig, ModelConfig, VisionConfig
    from mmtune.data.synth import WorldSizes, write_world
    from mmtune.models.io import save_model
    from mmtune.models.tokenizer import Tokenizer
    from mmtune.models.vlm import VisionLanguageModel

    if not (work / "model" / "config.json").is_file():
        cfg = ModelConfig(dim=2048, n_layers=16, n_heads=16, vocab_size=32000, max_seq_len=256)
        tokenizer = Tokenizer.from_path(ROOT / "tests" / "assets" / "llama-tokenizer")
        with torch.device("cpu"):
            model = VisionLanguageModel(cfg, VisionConfig(), ConnectorConfig(), tokenizer.image_token_id)
        save_model(model, work / "model", tokenizer=tokenizer)
        del model
    if not (work / "clip" / "config.json").is_file():
        tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                 num_attention_heads=2, image_size=32, patch_size=8))
        tower.save_pretrained(work / "clip")
    if not (work / "world").is_dir():
        write_world(work / "world", seed=0, image_size=32, sizes=WorldSizes(32, 24, 12, 2, 2, 16))


CONFIG = """model: {{dim: 2048, n_layers: 16, n_heads: 16, vocab_size: 32000, max_seq_len: 256}}
vision: {{kind: clip, path: {work}/clip}}
connector: {{kind: mlp}}
trainable: {{vision: frozen, connector: full, llm: {llm}}}
tokenizer: {{path: {root}/tests/assets/llama-tokenizer}}
data:
  sources: [{{path: '{work}/world/stage1/{{00000..00001}}.tar', kind: webdataset}}]
  template: caption
  max_seq_len: 128
  num_workers: 0
training: {{output_dir: {out}, init_from: {work}/model, max_steps: 1, save_every: 0, global_batch_size: 2,
           micro_batch_size: 1, dtype: fp32}}
"""


def write_config(work: Path, stage: int, out: Path) -> Path:
    """The benchmark run's YAML: stage 1 trains the connector only, stage 2 the LLM too."""
    path = work / f"stage{stage}.yaml"
    path.write_text(CONFIG.format(work=work, root=ROOT, out=out, llm="frozen" if stage == 1 else "full"))
    return path


def run(work: Path, stage: int, src: Path, nproc: int) -> dict:
    """One launch; per-rank peak RSS in GiB and the wall time."""
    out = work / f"run-stage{stage}-{src.parent.name}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", str(nproc), "--no-python", sys.executable, "-c", WRAPPER,
           "train", str(write_config(work, stage, out))]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-4000:])
    peaks = {int(m.group(1)): round(int(m.group(2)) / 1024**2, 2)
             for m in re.finditer(r"PEAK_RSS rank=(\d+) kib=(\d+)", done.stderr)}
    first = re.search(r"first step done ([\d.]+) s after launch; peak resident memory per rank: ([\d., ]+) GiB",
                      done.stderr)
    return {"stage": stage, "src": str(src), "peak_rss_gib": dict(sorted(peaks.items())), "wall_s": round(wall, 1),
            "first_step_s": float(first.group(1)) if first else None,
            "peak_at_first_step_gib": first.group(2) if first else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmtune-startup"))
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    parser.add_argument("--stage", type=int, choices=(1, 2), action="append")
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    write_inputs(args.work)
    for stage in args.stage or (1, 2):
        print(json.dumps(run(args.work, stage, args.src.resolve(), args.nproc)), flush=True)


if __name__ == "__main__":
    main()
