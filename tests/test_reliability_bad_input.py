"""Bad input at the edges: wrong command-line arguments, configs and paths across every command.

Each case runs the real ``python -m mmtune`` entry point (in one warm driver process that forks a
child per case, see :func:`helpers_reliability.run_cli_cases`) and must end with exit code 2, one clear
``mmtune ...: error: ...`` line on stderr naming what is wrong, and no traceback. Bad config *values*
through ``load_config`` are covered by tests/test_config.py; this table is about the CLI surface, and leaves
out the cases tests/test_cli.py and tests/test_cli_generate.py already run
(unknown command, missing image, URL image, unknown template, --batch without --out, empty answer).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from helpers_reliability import fast_tokenizer, image_bytes, run_cli_cases

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")
USAGE = re.compile(r"^(usage: |\s+)")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Paths the cases point at: a config, a tiny saved model with a CLIP tower, junk files."""
    from mmtune.config import load_config
    from mmtune.models.io import save_model
    from mmtune.models.tokenizer import Tokenizer
    from mmtune.models.vlm import build_model

    tmp = tmp_path_factory.mktemp("bad-input")
    tok_dir = fast_tokenizer(tmp / "tokenizer")
    config = tmp / "run.yaml"
    config.write_text(f"model: {{preset: debug, n_layers: 1, max_seq_len: 64}}\nvision: {{preset: debug-clip}}\n"
                      f"connector: {{kind: mlp}}\ntokenizer: {{path: {tok_dir}}}\n"
                      f"data: {{sources: [{{path: {tmp}/captions.jsonl}}]}}\n"
                      f"training: {{output_dir: {tmp}/run, max_steps: 2}}\n")
    (tmp / "captions.jsonl").write_text('{"image": "/nonexistent.png", "caption": "x"}\n')
    tokenizer = Tokenizer.from_path(tok_dir)
    torch.manual_seed(0)
    save_model(build_model(load_config(config), tokenizer.image_token_id), tmp / "model", tokenizer=tokenizer)
    (tmp / "bad.yaml").write_text("model: {dim: [unclosed\n")
    (tmp / "list.yaml").write_text("- just\n- a list\n")
    (tmp / "self.yaml").write_text("inherit: self.yaml\n")
    (tmp / "notes.txt").write_text("this is not an image\n")
    (tmp / "photo.png").write_bytes(image_bytes(1))
    (tmp / "empty").mkdir()
    (tmp / "exists").mkdir()
    (tmp / "exists" / "keep.txt").write_text("precious")
    return {"cfg": config, "model": tmp / "model", "tmp": tmp}


# (argv with {cfg} {model} {tmp} placeholders, text the error line must hold)
CASES: list[tuple[str, str]] = [
    ("", "required: COMMAND"),
    ("--log-level LOUD config", "invalid choice: 'LOUD'"),
    # config files and overrides (train / config / init / data inspect)
    ("train", "required: config"),
    ("train {tmp}/missing.yaml", "an existing YAML file"),
    ("train {tmp}/bad.yaml", "valid YAML"),
    ("train {tmp}/list.yaml", "a YAML mapping of sections"),
    ("train {tmp}/self.yaml", "a file that does not inherit itself"),
    ("train {cfg} --training.lr", "a value after the option"),
    ("train {cfg} --training.lr fast", "'training.lr': got 'fast'"),
    ("train {cfg} --nosuch.field 1", "'nosuch'"),
    ("train {cfg} --training.max_steps -1", "'training.max_steps': got -1"),
    ("train {cfg} --training.micro_batch_size 3", "a multiple of micro_batch_size=3"),
    ("train {cfg} --parallel.tp 3", "'parallel.tp'"),
    ("train {cfg} --tokenizer.path {tmp}/empty", "no tokenizer.json or tokenizer.model"),
    ("train {cfg} --resume {tmp}/empty", "--resume"),
    ("config {cfg} --data.batching zigzag", "'data.batching': got 'zigzag'"),
    ("config {cfg} --vision.image_mean [1,2]", "three numbers"),
    ("init {cfg}", "required: --out"),
    ("init {cfg} --out {tmp}/i --model.vocab_size 100", "model.vocab_size"),
    ("data inspect {tmp}/missing.yaml", "an existing YAML file"),
    ("data llava-to-single-turn {cfg} {tmp}/o.json --training.lr 1", "no --section.field options"),
    # models and images (generate / score / chat / bench / serve)
    ("generate --prompt hi", "required: --model"),
    ("generate --model {tmp}/missing", "no such file or directory"),
    ("generate --model {tmp}/empty", "found an empty directory; accepted: an mmtune saved model"),
    ("generate --model {model} --image {tmp}/notes.txt", "cannot decode image"),
    ("generate --model {model} --device warp9", "--device"),
    ("generate --model {model} --temperature -1", "temperature"),
    ("generate --model {model} --max-new-tokens many", "invalid int value: 'many'"),
    ("score --model {model}", "required: --answer"),
    ("chat --model {tmp}/missing", "no such file or directory"),
    ("bench generate --model {model} --batch 0", "--batch"),
    ("serve --model {tmp}/missing", "no such file or directory"),
    ("serve --model {model} --max-pending 0", "--max-pending"),
    ("serve --model {model} --port 99999", "--port"),
    ("serve --model {model} --max-body-mb 0", "--max-body-mb"),
    # weights in and out (convert / export / eval / plan)
    ("convert", "required: FORMAT"),
    ("convert meta --params {tmp}/params.json --ckpt-dir {tmp}/empty --out {tmp}/c1", "params.json"),
    ("convert hf --model {tmp}/missing --out {tmp}/c2", "missing"),
    ("convert hf --model {model} --out {tmp}/c3 --dtype int8", "invalid choice: 'int8'"),
    ("convert accessory --ckpt-dir {tmp}/empty --out {tmp}/c4", "empty"),
    ("export {tmp}/missing --out {tmp}/e1", "missing"),
    ("export {model} --out {tmp}/e2 --llm-only", "--llm-only"),
    ("export {model} --out {tmp}/exists", "exists and is not empty"),
    ("eval --model {model} --data {tmp}/captions.jsonl --task translate", "invalid choice: 'translate'"),
    ("eval --model {model} --data {tmp}/captions.jsonl --task caption --batch-size 0", "--batch-size"),
    ("eval --model {model} --data {tmp}/missing.jsonl --task caption", "missing.jsonl"),
    ("plan --gpus 0", "--gpus"),
    ("plan --model llama9-1t", "llama9-1t"),
]


def _argv(text: str, world: dict[str, Path]) -> list[str]:
    import shlex

    return [a.format(**{k: str(v) for k, v in world.items()}) for a in shlex.split(text)]


def test_every_bad_input_is_one_error_line_with_exit_code_2(world):
    assert len(CASES) >= 30
    results = run_cli_cases([_argv(args, world) for args, _ in CASES], timeout=90)
    failures = []
    for (args, needle), (code, stderr) in zip(CASES, results):
        lines = [line for line in stderr.splitlines() if line.strip() and "\r" not in line]
        last = lines[-1] if lines else ""
        others = [line for line in lines[:-1] if not (LOG_LINE.match(line) or USAGE.match(line))]
        ok = (code == 2 and "Traceback" not in stderr and re.match(r"^mmtune( [\w-]+)*: error: ", last)
              and needle in last and not others)
        if not ok:
            failures.append(f"mmtune {args!r}: exit {code}, stderr ends: {stderr[-600:]!r}")
    assert not failures, "\n".join(failures)
