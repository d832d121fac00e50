"""``mmtune data ACTION ...``: data tools, one sub-subcommand per action.

Actions are listed in :data:`ACTIONS` (name -> one-line help, ``"module:object"``); the object (a class
or module) has ``add_arguments(parser)`` and ``run(args) -> int``, and its module imports only the
standard library at top level. Adding an action is one line in that table.

* ``llava-to-single-turn IN OUT``: LLaVA multi-turn JSON -> one record per question/answer pair
  (:mod:`mmtune.data.convert`).
* ``inspect CONFIG``: one rendered sample per source with the supervised span highlighted, and counts
  (samples, tokens, image share, truncations, bad records) over the sources.
* ``check CONFIG``: every source read once, in parallel (:mod:`mmtune.data.check`): counts per source,
  bad records, realised shares, speed; exit code 1 when training would stop.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

ACCEPTS_OVERRIDES = True

# name -> (one-line help, "module:object" with add_arguments(parser) and run(args) -> int)
ACTIONS: dict[str, tuple[str, str]] = {
    "llava-to-single-turn": ("Split LLaVA conversations into one record per question/answer pair.",
                             "mmtune.commands.data:ConvertCommand"),
    "inspect": ("Show one rendered sample per source and counts over the data of a config.",
                "mmtune.commands.data:InspectCommand"),
    "check": ("Read every source of a config once and report what training would find (exit 1: it would stop).",
              "mmtune.commands.data:CheckCommand"),
    "synth": ("Write the synthetic shape world (shards, LLaVA/Alpaca JSON, tokenizer).",
              "mmtune.commands.quickstart:SynthCommand"),
}


def _target(spec: str) -> Any:
    module, _, name = spec.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, name) if name else loaded


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one sub-parser per action of :data:`ACTIONS`."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, (help_text, spec) in ACTIONS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        target = _target(spec)
        target.add_arguments(p)
        p.set_defaults(_action=target)


def run(args: argparse.Namespace) -> int:
    """Runs the chosen action."""
    if args.overrides and args.action not in ("inspect", "check"):
        from mmtune.errors import ConfigError

        raise ConfigError("override", " ".join(args.overrides), f"no --section.field options for {args.action}")
    return int(args._action.run(args) or 0)


class ConvertCommand:
    """``llava-to-single-turn IN OUT``."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """IN, OUT and the conversion options."""
        parser.add_argument("input", metavar="IN", help="LLaVA JSON (a list of {id, image, conversations})")
        parser.add_argument("output", metavar="OUT", help="where to write the single-turn JSON")
        parser.add_argument("--strip-newlines", action="store_true",
                            help="delete every newline and keep ids as they are: exactly the output of "
                                 "LLaMA2-Accessory's tools/llava_to_single_turn.py")
        parser.add_argument("--image-prefix", default=None, metavar="PREFIX",
                            help="text put before every image path (e.g. /data/coco/train2017/)")
        parser.add_argument("--max-bad-fraction", type=float, default=0.01, metavar="F",
                            help="exit with code 1 when more than this share of the input records has a "
                                 "problem (default: 0.01, as data.max_bad_fraction); the output is written")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """Converts and prints a summary (problems on stderr); 1 when nothing was converted or more than
        ``--max-bad-fraction`` of the records had a problem."""
        from mmtune.data.convert import llava_to_single_turn
        from mmtune.errors import ConfigError

        if not 0.0 <= args.max_bad_fraction <= 1.0:
            raise ConfigError("--max-bad-fraction", args.max_bad_fraction, "a number in [0, 1]")
        report = llava_to_single_turn(args.input, args.output, strip_newlines=args.strip_newlines,
                                      image_prefix=args.image_prefix, progress=not args.no_progress)
        for example in report.examples:
            print(f"warning: {example}", file=sys.stderr)
        if report.problems > len(report.examples):
            print(f"warning: ... {report.problems - len(report.examples)} more problems", file=sys.stderr)
        print(f"{report.records} records -> {report.written} single-turn records in {args.output} "
              f"({report.problems} problems)")
        if not report.written:
            print(f"error: no record could be converted ({report.bad_records} of {report.records} records "
                  "have a problem)", file=sys.stderr)
            return 1
        if report.bad_fraction > args.max_bad_fraction:
            print(f"error: {report.bad_records} of {report.records} records have a problem "
                  f"({100 * report.bad_fraction:.1f}%, above --max-bad-fraction {args.max_bad_fraction:g})",
                  file=sys.stderr)
            return 1
        return 0


class InspectCommand:
    """``inspect CONFIG [--section.field value ...]``."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """CONFIG and how much to read."""
        parser.add_argument("config", metavar="CONFIG", help="a run config (YAML) with a data section")
        parser.add_argument("--limit", type=int, default=2000, metavar="N",
                            help="records read per source for the counts (default: 2000; 0 reads all)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """Prints the samples and the counts."""
        from rich.console import Console

        from mmtune.config import load_config

        cfg = load_config(args.config, args.overrides)
        console = Console(highlight=False)
        tokenizer, encoder, transform = _encoding_parts(cfg)
        from mmtune.data.mixture import open_sources

        rows = []
        for source in open_sources(cfg.data):
            sample, counts = _survey(source, tokenizer, encoder, transform, args.limit)
            console.rule(f"{source.name} ({type(source).__name__}, weight {source.weight:g})")
            console.print(render_sample(sample, tokenizer) if sample is not None else "no usable sample")
            rows.append((source.name, counts))
        console.print(_counts_table(rows))
        for name, counts in rows:
            for report in counts["reports"]:
                console.print(f"bad: {name}: {report}", soft_wrap=True, markup=False)
        return 0


class CheckCommand:
    """``check CONFIG [--processes N] [--section.field value ...]``."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """CONFIG and the parallelism."""
        import os

        parser.add_argument("config", metavar="CONFIG", help="a run config (YAML) with a data section")
        parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, metavar="N",
                            help="processes reading the sources' shards and blocks of entries (default: the cores)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """Prints the counts, bad records, shares, speed and problems; 1 when training would stop."""
        from rich.console import Console

        from mmtune.config import load_config
        from mmtune.data.check import check_sources
        from mmtune.data.mixture import open_sources
        from mmtune.data.processor import Processor

        cfg = load_config(args.config, args.overrides)
        processor = Processor.from_config(cfg)
        tok = processor.tokenizer
        report = check_sources(open_sources(cfg.data), processor.encoder(cfg.data), processor.image_transform,
                               pad_id=tok.pad_id, image_token_id=tok.image_token_id, processes=args.processes,
                               max_bad_fraction=cfg.data.max_bad_fraction, progress=not args.no_progress)
        console = Console(highlight=False, soft_wrap=True)
        console.print(_check_table(report))
        for name, tally in report.tallies.items():
            for bad in tally.stats.of(name).reports:
                console.print(f"bad: {name}: {bad}", markup=False)
        console.print(f"{report.read} records in {report.seconds:.1f} s with {report.processes} processes: "
                      f"{report.samples_per_second:.0f} samples/s", markup=False)
        for problem in report.problems:
            console.print(f"problem: {problem}", markup=False)
        console.print("ok: training would read this data" if report.ok else "training would stop on this data")
        return 0 if report.ok else 1


def _check_table(report: Any) -> Any:
    from rich.table import Table

    table = Table(title="every record of each source (images: share of usable samples with one)")
    for column in ("source", "read", "usable", "tokens", "images", "truncated", "too long", "image mismatch",
                   "unsupervised", "bad", "share"):
        table.add_column(column, justify="left" if column == "source" else "right", overflow="fold")
    for name, tally in report.tallies.items():
        counts, usable = tally.stats.of(name), tally.usable(name)
        table.add_row(name, str(counts.read), str(usable), str(tally.tokens),
                      f"{tally.with_image / usable:.0%}" if usable else "-", str(counts.truncated),
                      str(tally.skips["length"]), str(tally.skips["images"]), str(tally.skips["unsupervised"]),
                      str(counts.bad), f"{report.shares.get(name, 0.0):.1%}")
    return table


def _encoding_parts(cfg: Any) -> tuple[Any, Any, Any]:
    """(tokenizer, record encoder, image transform or None) for ``cfg``, from its processor."""
    from mmtune.data.processor import Processor

    processor = Processor.from_config(cfg)
    return processor.tokenizer, processor.encoder(cfg.data), processor.image_transform


def _records(source: Any, limit: int) -> Any:
    from itertools import islice

    return islice(source.records(), limit or None)


def _survey(source: Any, tokenizer: Any, encoder: Any, transform: Any, limit: int) -> tuple[Any, dict]:
    """(first encoded sample, counts) over the first ``limit`` records of ``source``, counted as
    ``mmtune data check`` counts them (:func:`mmtune.data.check.tally_items`)."""
    from tqdm import tqdm

    from mmtune.data.check import Tally, tally_items
    from mmtune.data.plan import encode_counted
    from mmtune.data.stats import DataStats

    tally = Tally()
    for bad in getattr(source, "load_bad", []):
        tally.stats.add_bad(bad)
    tally.add(tally_items(tqdm(_records(source, limit), desc=source.name, unit="record", leave=False), encoder,
                          transform, tokenizer.pad_id, tokenizer.image_token_id))
    first = next((s for s in (encode_counted(encoder, r, DataStats()) for r in _records(source, limit))
                  if s is not None), None)
    counts, usable = tally.stats.of(source.name), tally.usable(source.name)
    return first, {"read": counts.read, "samples": usable, "tokens": tally.tokens,
                   "images": f"{tally.with_image / usable:.0%}" if usable else "-",
                   "cut": counts.truncated, "skipped": counts.skipped, "bad": counts.bad,
                   "reports": counts.reports}


def render_sample(sample: Any, tokenizer: Any) -> Any:
    """A rich Text of ``sample``: image runs as ``<image x N>``, supervised tokens bold green, prompt dim."""
    from rich.text import Text

    ids = sample.input_ids.tolist()
    mask = sample.loss_mask.tolist()
    kinds = ["image" if t == tokenizer.image_token_id else "target" if m else "prompt" for t, m in zip(ids, mask)]
    text = Text()
    start, done = 0, ""
    for end in range(1, len(ids) + 1):
        if end < len(ids) and kinds[end] == kinds[start]:
            continue
        upto = tokenizer.decode(ids[:end], skip_special_tokens=False)  # whole prefix: spaces survive
        if kinds[start] == "image":
            text.append(f"<image x {end - start}>", style="magenta")
        else:
            text.append(upto[len(done):], style="bold green" if kinds[start] == "target" else "dim")
        start, done = end, upto
    return text


def _counts_table(rows: list[tuple[str, dict]]) -> Any:
    from rich.table import Table

    table = Table(title="records read per source (images: share of samples with one; cut: truncated)")
    columns = [c for c in (rows[0][1] if rows else {}) if c != "reports"]
    table.add_column("source", overflow="fold")
    for name in columns:
        table.add_column(name, justify="right")
    for name, counts in rows:
        table.add_row(name, *(str(counts[c]) for c in columns))
    return table
