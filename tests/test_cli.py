"""The ``mmtune`` command: help for every subcommand, lazy start-up, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mmtune import cli


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmtune", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command_with_a_line(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name, help_text in cli.COMMANDS.items():
        assert name in out
        assert help_text.split()[0] in out


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--help"])
    assert info.value.code == 0
    assert "usage: mmtune " + name in capsys.readouterr().out


def test_building_the_parser_imports_no_heavy_library():
    code = ("import sys; from mmtune import cli; cli.build_parser(); "
            "heavy = [m for m in ('torch', 'transformers', 'gradio', 'fastapi', 'numpy', 'PIL') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_split_overrides_keeps_positionals_apart():
    rest, overrides = cli.split_overrides(["train", "--training.lr", "1e-4", "cfg.yaml", "--resume", "auto",
                                           "--data.batching=padded"])
    assert rest == ["train", "cfg.yaml", "--resume", "auto"]
    assert overrides == ["--training.lr", "1e-4", "--data.batching=padded"]


@pytest.mark.parametrize("args,needle", [
    (["config", "--training.lr", "abc"], "'training.lr': got 'abc'; expected a number"),
    (["config", "does-not-exist.yaml"], "expected an existing YAML file"),
    (["config", "--model.preset", "nope"], "'model.preset'"),
])
def test_config_errors_are_one_line_and_exit_2(args, needle):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.stderr


def test_unknown_command_and_unknown_flag_exit_2():
    assert run_cli("frobnicate").returncode == 2
    assert run_cli("config", "--no-such-flag").returncode == 2
