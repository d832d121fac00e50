"""``mmtune quickstart [--out DIR] [--connector mlp|qformer]``: the whole recipe on a synthetic world.

Writes the synthetic shape world (webdataset shards, LLaVA and Alpaca JSON, a word-level tokenizer),
trains stage 1 (captions) and stage 2 (instructions, from stage 1) with the real trainer, exports both
as saved-model directories, evaluates them on held-out images and prints a table of metrics plus a few
answers. Output: ``DIR/world``, ``DIR/configs`` (the exact configs run), ``DIR/runs`` (training runs),
``DIR/stage1``, ``DIR/stage2`` (saved models), ``DIR/report.json``, ``DIR/report.md`` and
``DIR/stage{1,2}_loss.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

CONFIG_PREFIX = {"mlp": "quickstart", "qformer": "quickstart-qformer"}
DEFAULT_OUT = "runs/quickstart"
"""The output folder the config files' paths name; replaced by ``--out``."""
CAPTION_REQUEST = "describe the image."


@dataclass
class QuickstartSettings:
    """What one quickstart run does."""

    out: Path
    connector: str = "mlp"
    seed: int = 0
    threads: int = 0
    stage_steps: tuple[Optional[int], Optional[int]] = (None, None)
    images: Optional[int] = None
    eval_images: int = 200
    config_dir: Optional[Path] = None
    command: str = "mmtune quickstart"


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Registers the output folder, the architecture and the size knobs."""
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--connector", choices=sorted(CONFIG_PREFIX), default="mlp",
                   help="mlp: LLaVA-1.5 (CLIP-style tower, MLP at <image>); qformer: LLaMA2-Accessory "
                        "(BLIP-2-style tower, Q-Former queries after BOS). Default mlp")
    p.add_argument("--seed", type=int, default=0, help="world and training seed (default 0)")
    p.add_argument("--threads", type=_positive, default=None,
                   help="compute threads for training and evaluation (default: automatic, see parallel.cpu_threads)")
    p.add_argument("--stage1-steps", type=_positive, default=None, help="override stage 1's optimizer steps")
    p.add_argument("--stage2-steps", type=_positive, default=None, help="override stage 2's optimizer steps")
    p.add_argument("--images", type=_positive, default=None,
                   help="training images per stage (default: the world's default sizes)")
    p.add_argument("--eval-images", type=_positive, default=200, help="held-out images to evaluate on (default 200)")
    p.add_argument("--config-dir", default=None, metavar="DIR",
                   help="folder with quickstart[-qformer]-stage{1,2}.yaml (default: the checkout's configs/)")


def run(args: argparse.Namespace) -> int:
    """Runs the recipe and prints the report."""
    from mmtune.evaluation.report import terminal_table

    settings = QuickstartSettings(out=Path(args.out), connector=args.connector, seed=args.seed,
                                  threads=args.threads or 0,
                                  stage_steps=(args.stage1_steps, args.stage2_steps), images=args.images,
                                  eval_images=args.eval_images,
                                  config_dir=Path(args.config_dir) if args.config_dir else None,
                                  command=" ".join(["mmtune", *sys.argv[1:]]))
    report = run_quickstart(settings)
    print()
    print(terminal_table(report))
    print(f"\nreport: {settings.out / 'report.md'}; models: {settings.out / 'stage1'}, {settings.out / 'stage2'}")
    return 0


class SynthCommand:
    """``mmtune data synth --out DIR``: writes the synthetic world on its own (see mmtune.data.synth)."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Output folder, seed, image size and counts."""
        parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
        parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
        parser.add_argument("--image-size", type=_positive, default=32, help="image side in pixels (default 32)")
        parser.add_argument("--images", type=_positive, default=None,
                            help="training images per stage (default 12000 per stage)")
        parser.add_argument("--heldout", type=_positive, default=200, help="held-out images (default 200)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """Writes the world and says where each part is."""
        from mmtune.data.synth import write_world

        sizes = _world_sizes(args.images, args.heldout)
        out = write_world(args.out, seed=args.seed, image_size=args.image_size, sizes=sizes)
        print(f"wrote {out}: stage1/*.tar (webdataset), stage2/llava.json + images/, stage2/alpaca.json, "
              f"heldout/, tokenizer/")
        return 0


# ------------------------------------------------------------------ configs and world

def _config_path(settings: QuickstartSettings, stage: int) -> Path:
    from mmtune.errors import ConfigError

    folder = settings.config_dir or Path(__file__).resolve().parents[3] / "configs"
    path = folder / f"{CONFIG_PREFIX[settings.connector]}-stage{stage}.yaml"
    if not path.is_file():
        raise ConfigError("--config-dir", str(folder), f"a folder holding {path.name}")
    return path


def _relocate(value: Any, out: Path) -> Any:
    """Every string path under ``DEFAULT_OUT`` moved under ``out``."""
    if isinstance(value, dict):
        return {k: _relocate(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocate(v, out) for v in value]
    if isinstance(value, str) and (value == DEFAULT_OUT or value.startswith(DEFAULT_OUT + "/")):
        return str(out) + value[len(DEFAULT_OUT):]
    return value


def _stage_yaml(settings: QuickstartSettings, stage: int, world: Path, vocab_size: int) -> Path:
    """Writes ``DIR/configs/stage{N}.yaml``: the config file with its paths moved to ``DIR``, the
    shard range of this world, the seed, steps and a vocabulary size that fits the tokenizer."""
    import yaml

    from mmtune.config import read_yaml

    data = _relocate(read_yaml(_config_path(settings, stage)), settings.out)
    shards = sorted((world / "stage1").glob("*.tar"))
    for source in data["data"]["sources"]:
        if source["path"].endswith(".tar"):
            source["path"] = str(world / "stage1" / f"{{00000..{len(shards) - 1:05d}}}.tar")
    data["model"]["vocab_size"] = max(int(data["model"].get("vocab_size", 0)), vocab_size)
    data["training"]["seed"] = settings.seed
    if settings.threads:
        data.setdefault("parallel", {})["cpu_threads"] = settings.threads
    steps = settings.stage_steps[stage - 1]
    if steps is not None:
        data["training"]["max_steps"] = steps
    path = settings.out / "configs" / f"stage{stage}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _world_sizes(images: Optional[int], heldout: int) -> Any:
    """The world's default sizes, with ``images`` per training stage (and half as many text tasks)."""
    from mmtune.data.synth import WorldSizes

    sizes = WorldSizes(heldout_images=heldout)
    if images is not None:
        sizes.stage1_images = sizes.stage2_images = images
        sizes.stage2_text = max(images // 2, 1)
    return sizes


def _world(settings: QuickstartSettings, image_size: int) -> Path:
    """Writes the world under ``DIR/world`` unless the same world is already there."""
    from dataclasses import asdict

    from mmtune.data.synth import write_world

    sizes = _world_sizes(settings.images, settings.eval_images)
    world = settings.out / "world"
    wanted = {"seed": settings.seed, "image_size": image_size, "sizes": asdict(sizes)}
    stamp = world / "world.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return world
    shutil.rmtree(world, ignore_errors=True)
    return write_world(world, seed=settings.seed, image_size=image_size, sizes=sizes)


def _vocab_size(world: Path) -> int:
    from mmtune.models.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_path(world / "tokenizer")
    largest = max(i for i in tokenizer.hf.get_vocab().values() if i != tokenizer.image_token_id)
    return (largest + 1 + 31) // 32 * 32


# ------------------------------------------------------------------ training

def _train(config: Path, model_dir: Path, loss_png: Path) -> int:
    """Trains one stage in this process with the real trainer, exports it; returns its step count."""
    from mmtune.config import load_config
    from mmtune.formats.export_hf import export
    from mmtune.training.run import run_training

    cfg = load_config(config)
    run_dir = Path(cfg.training.output_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(model_dir, ignore_errors=True)
    run_training(cfg)
    export(run_dir, model_dir)
    if (run_dir / "loss.png").is_file():
        shutil.copy(run_dir / "loss.png", loss_png)
    return int(cfg.training.max_steps or 0)


# ------------------------------------------------------------------ evaluation

def _evaluate(out: Path, world: Path, stage2: "tuple[str, Optional[str]]") -> dict[str, dict]:
    """Held-out metrics of both saved models."""
    from mmtune.evaluation.runner import Predictor, load_items, score_captions, score_vqa

    held = world / "heldout"
    stage1 = Predictor.from_dir(str(out / "stage1"), "caption")
    result1 = score_captions(stage1.predict(load_items(str(held / "captions.jsonl"), "caption"),
                                            desc="stage 1 captions"))
    model2 = Predictor.from_dir(str(out / "stage2"), stage2[0], system_prompt=stage2[1])
    captions = model2.predict(load_items(str(held / "captions.jsonl"), "caption", prompt=CAPTION_REQUEST),
                              desc="stage 2 captions")
    vqa = score_vqa(model2.predict(load_items(str(held / "vqa.json"), "vqa"), desc="stage 2 VQA"))
    text = score_vqa(model2.predict(load_items(str(held / "alpaca.json"), "vqa"), desc="stage 2 text"))
    result2 = {**score_captions(captions), "vqa_accuracy": vqa["exact_match"], "vqa_by_question": vqa["by_question"],
               "text_accuracy": text["exact_match"]}
    return {"stage1": result1, "stage2": result2}


def _examples(out: Path, world: Path, stage2: "tuple[str, Optional[str]]", count: int = 3) -> list[dict]:
    """A few answers on held-out images: a plain and a prefix-prompted stage-1 caption, a stage-2
    caption on request, a question, and a text-only instruction."""
    from dataclasses import replace

    from mmtune.data.synth.grammar import CAPTION_PREFIX
    from mmtune.evaluation.runner import EvalItem, Predictor, caption_is_correct, load_items
    from mmtune.evaluation.scoring import vqa_exact_match

    held = world / "heldout"
    plain = load_items(str(held / "captions.jsonl"), "caption", limit=count)
    prefixed = [EvalItem(replace(i.record, prefix=CAPTION_PREFIX), i.references, i.scene, "caption") for i in plain]
    Predictor.from_dir(str(out / "stage1"), "caption").predict(plain + prefixed, desc="examples stage 1")
    asked = load_items(str(held / "captions.jsonl"), "caption", prompt=CAPTION_REQUEST, limit=count)
    questions = load_items(str(held / "vqa.json"), "vqa", limit=count)
    text = load_items(str(held / "alpaca.json"), "vqa", limit=2)
    model2 = Predictor.from_dir(str(out / "stage2"), stage2[0], system_prompt=stage2[1])
    model2.predict(asked + questions + text, desc="examples stage 2")
    rows = []
    for model, items in (("stage1", plain + prefixed), ("stage2", asked + questions + text)):
        for item in items:
            users = [m for m in item.record.messages if m.role == "user"]
            prompt = (users[-1].content + (f" {users[-1].input}" if users[-1].input else "")) if users else ""
            prompt = prompt.replace("<image>", "").strip() or (f"(prefix) {item.record.prefix}" if item.record.prefix
                                                               else "(caption)")
            correct = caption_is_correct(item) if item.kind == "caption" else \
                bool(vqa_exact_match(item.prediction, item.references))
            image = Path(str(item.record.image)).name if item.record.image is not None else "-"
            rows.append({"model": model, "image": image, "prompt": prompt, "answer": item.prediction,
                         "references": item.references[:1], "correct": correct})
    return rows


@contextmanager
def _eval_threads(threads: int) -> Iterator[None]:
    """Evaluation with ``threads`` intra-op threads (0: as they are), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_quickstart(settings: QuickstartSettings) -> dict[str, Any]:
    """World -> stage 1 -> stage 2 -> evaluation -> ``report.json`` / ``report.md``; returns the report."""
    from mmtune.config import load_config
    from mmtune.evaluation.report import write_report
    from mmtune.machine import machine_facts
    from mmtune.models.vision import resolve_image_settings

    start = time.monotonic()
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    image_size = resolve_image_settings(load_config(_config_path(settings, 1)).vision).size
    world = _world(settings, image_size)
    vocab = _vocab_size(world)
    steps = []
    for stage in (1, 2):
        config = _stage_yaml(settings, stage, world, vocab)
        steps.append(_train(config, out / f"stage{stage}", out / f"stage{stage}_loss.png"))
    data2 = load_config(out / "configs" / "stage2.yaml").data
    stage2 = (data2.template, data2.system_prompt)  # prompts exactly as stage 2 trained
    with _eval_threads(settings.threads):
        metrics = _evaluate(out, world, stage2)
        report = {"command": settings.command, "connector": settings.connector, "seed": settings.seed,
                  "threads": settings.threads or "automatic", "machine": machine_facts(),
                  "stage1": {"steps": steps[0], **metrics["stage1"]},
                  "stage2": {"steps": steps[1], **metrics["stage2"]}, "examples": _examples(out, world, stage2)}
    report["wall_seconds"] = time.monotonic() - start
    write_report(report, out)
    return report
