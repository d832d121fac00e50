"""``mmtune data check CONFIG``: every source read once (in forked processes or in this one) through the
loader's own encoder and image decoding; counts per source, bad records with locations, realised shares,
speed; exit code 0 when training would read the data, 1 (naming the source) when it would stop."""

from __future__ import annotations

import re

import pytest
import yaml

from data_factory import alpaca_items, llava_items, write_images, write_json, write_shards
from mmtune import cli


def _config(tmp_path, llama_tokenizer_dir, *, broken: bool = False) -> str:
    names = write_images(tmp_path / "imgs", 3)
    items = llava_items(6, names)
    items[4]["conversations"][0]["value"] = "<image> <image> two?"  # image count does not match
    items[5]["conversations"][1]["value"] = "word " * 400  # too long for max_seq_len
    items.append({"id": "q", "conversations": [{"from": "human", "value": "word " * 400},
                                               {"from": "gpt", "value": "cut off"}]})  # nothing supervised left
    write_json(tmp_path / "llava.json", items)
    write_json(tmp_path / "alpaca.json", alpaca_items(4))
    write_shards(tmp_path / "shards", 2, 3, stats=True, bad_image_keys=("000000001", "000000004") if broken else ())
    sources = [{"path": f"{tmp_path}/llava.json", "image_root": f"{tmp_path}/imgs"},
               {"path": f"{tmp_path}/alpaca.json", "template": "alpaca", "weight": 0.5}]
    if broken:
        sources.append({"path": f"{tmp_path}/shards/{{00000..00001}}.tar", "template": "caption", "name": "shards"})
    run = {"model": {"preset": "debug"}, "vision": {"preset": "debug-clip"}, "tokenizer": {"path": str(llama_tokenizer_dir)},
           "data": {"template": "llava_v1", "max_seq_len": 200, "max_bad_fraction": 0.2, "sources": sources}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    return str(tmp_path / "run.yaml")


def _row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if name in line and "│" in line)
    return [cell.strip() for cell in line.split("│")[2:-1]]


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_good_config_exits_0_with_the_counts(tmp_path, capsys, llama_tokenizer_dir, processes, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code = cli.main(["data", "check", _config(tmp_path, llama_tokenizer_dir), "--processes", processes,
                     "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    # read, usable, tokens, images, truncated, too long, image mismatch, unsupervised, bad, share
    llava, alpaca = _row(out, "llava.json"), _row(out, "alpaca.json")
    assert llava[:2] == ["7", "5"] and llava[3:9] == ["100%", "1", "0", "1", "1", "1"]
    assert alpaca[:2] == ["4", "4"] and alpaca[3:9] == ["0%", "0", "0", "0", "0", "0"]
    assert int(llava[2]) > int(alpaca[2]) > 0
    # map mode: llava 7 draws x 5/7 usable, alpaca round(0.5 x 4) = 2 draws: 5 : 2
    assert llava[9] == "71.4%" and alpaca[9] == "28.6%"
    assert re.search(r"bad: llava\.json: \S+llava\.json\[4\]: record 'r4': 2 <image> markers", out)
    assert re.search(r"11 records in \d+\.\d s with \d processes: \d+ samples/s", out)
    assert "ok: training would read this data" in out


def test_overflow_skip_counts_the_long_sample_as_too_long(tmp_path, capsys, llama_tokenizer_dir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code = cli.main(["data", "check", _config(tmp_path, llama_tokenizer_dir), "--processes", "1", "--no-progress",
                     "--data.overflow", "skip"])
    llava = _row(capsys.readouterr().out, "llava.json")
    assert code == 0 and llava[:2] == ["7", "4"] and llava[4:8] == ["0", "2", "1", "0"]  # both long ones


def test_a_config_with_a_bad_source_exits_1_naming_it(tmp_path, capsys, llama_tokenizer_dir, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code = cli.main(["data", "check", _config(tmp_path, llama_tokenizer_dir, broken=True), "--processes", "2",
                     "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and "source 'shards': 2 of 6 records unreadable (33.3%)" in problems[0]
    assert "llava" not in problems[0] and "00000.tar:000000001: cannot decode image" in problems[0]
    assert _row(out, "shards")[:2] == ["6", "4"]
    assert "training would stop on this data" in out


def test_a_source_without_a_usable_sample_exits_1(tmp_path, capsys, llama_tokenizer_dir):
    code = cli.main(["data", "check", _config(tmp_path, llama_tokenizer_dir), "--processes", "1", "--no-progress",
                     "--data.max_seq_len", "4"])
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem:")]
    assert code == 1 and "problem: source 'alpaca.json' has no usable sample" in problems
