"""``mmtune data``: the converter and inspect through the CLI, and the action table."""

from __future__ import annotations

import json

import pytest

from data_factory import alpaca_items, llava_items, write_images, write_json
from mmtune import cli
from mmtune.commands import data as data_command


def test_llava_to_single_turn_through_the_cli(tmp_path, capsys):
    items = llava_items(2, ["a.jpg"], turns=2)
    items[1]["conversations"].append({"from": "human", "value": "left over"})
    src = write_json(tmp_path / "llava.json", items)
    code = cli.main(["data", "llava-to-single-turn", str(src), str(tmp_path / "out.json"), "--image-prefix",
                     "/data/coco/", "--no-progress", "--max-bad-fraction", "0.5"])
    captured = capsys.readouterr()
    assert code == 0
    assert "2 records -> 4 single-turn records" in captured.out
    assert "warning: record r1: odd number of turns (5)" in captured.err
    out = json.loads((tmp_path / "out.json").read_text())
    assert [r["id"] for r in out] == ["r0_0", "r0_1", "r1_0", "r1_1"] and out[0]["image"] == "/data/coco/a.jpg"
    assert out[0]["conversations"][0]["value"] == "What is this?"


def test_converter_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    code = cli.main(["data", "llava-to-single-turn", str(tmp_path / "missing.json"), str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and "input file not found" in err
    assert cli.main(["data", "llava-to-single-turn", "a", "b", "--training.lr", "1"]) == 2


def test_converter_exits_1_with_the_count_when_no_record_converts(tmp_path, capsys):
    src = write_json(tmp_path / "bad.json", [{"id": "a"}, {"id": "b", "conversations": "text"}, 3])
    code = cli.main(["data", "llava-to-single-turn", str(src), str(tmp_path / "out.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no record could be converted (3 of 3 records have a problem)" in err
    assert json.loads((tmp_path / "out.json").read_text()) == []


def test_converter_exits_1_past_max_bad_fraction(tmp_path, capsys):
    items = llava_items(9, ["a.jpg"]) + [{"id": "broken"}]
    src = write_json(tmp_path / "llava.json", items)
    out = str(tmp_path / "out.json")
    assert cli.main(["data", "llava-to-single-turn", str(src), out, "--no-progress"]) == 1
    assert "1 of 10 records have a problem (10.0%, above --max-bad-fraction 0.01)" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "out.json").read_text())) == 9
    assert cli.main(["data", "llava-to-single-turn", str(src), out, "--no-progress",
                     "--max-bad-fraction", "0.1"]) == 0
    assert cli.main(["data", "llava-to-single-turn", str(src), out, "--max-bad-fraction", "2"]) == 2
    assert "--max-bad-fraction" in capsys.readouterr().err


def _config(tmp_path, llama_tokenizer_dir) -> str:
    names = write_images(tmp_path / "imgs", 2)
    (tmp_path / "imgs" / "1.png").write_bytes(b"not an image")
    write_json(tmp_path / "llava.json", llava_items(4, names))
    write_json(tmp_path / "alpaca.json", alpaca_items(3))
    (tmp_path / "run.yaml").write_text(f"""
model: {{preset: debug}}
vision: {{preset: debug-clip}}
tokenizer: {{path: {llama_tokenizer_dir}}}
data:
  template: llava_v1
  max_seq_len: 200
  sources:
    - {{path: {tmp_path}/llava.json, image_root: {tmp_path}/imgs}}
    - {{path: {tmp_path}/alpaca.json, template: alpaca}}
""")
    return str(tmp_path / "run.yaml")


def test_inspect_shows_a_sample_per_source_and_counts(tmp_path, capsys, llama_tokenizer_dir):
    code = cli.main(["data", "inspect", _config(tmp_path, llama_tokenizer_dir), "--data.max_seq_len", "150"])
    out = capsys.readouterr().out
    assert code == 0
    assert "llava.json" in out and "alpaca.json" in out
    assert "<image x " in out and "Thing 0." in out and "number 0" in out
    table = out[out.index("records read per source"):]
    llava_row = next(line for line in table.splitlines() if "llava.json" in line)
    cells = [c.strip() for c in llava_row.split("│")[1:-1]]
    assert cells[:3] == ["llava.json", "4", "2"]  # read, samples: the two records of 1.png are bad
    assert cells[4:8] == ["100%", "0", "0", "2"]
    assert f"bad: llava.json: {tmp_path}/llava.json[1]: cannot decode image" in out.replace("\n", "")


def test_render_sample_highlights_the_supervised_span(tmp_path, llama_tokenizer_dir):
    from mmtune.data.encode import encode_record
    from mmtune.data.records import chat_record
    from mmtune.models.tokenizer import Tokenizer

    tok = Tokenizer.from_path(llama_tokenizer_dir)
    sample = encode_record(chat_record([("<image>\nWhat?", "A red square.")], image=b"x"), tok, "llava_v1",
                           num_image_tokens=3, image_position="placeholder", max_seq_len=100)
    text = data_command.render_sample(sample, tok)
    styled = {text.plain[s.start:s.end]: str(s.style) for s in text.spans}
    assert styled["<image x 3>"] == "magenta"
    assert [k for k, v in styled.items() if v == "bold green"] == [" A red square.</s>"]


def test_the_action_table_drives_the_parser():
    parser = cli.build_parser()
    convert = parser.parse_args(["data", "llava-to-single-turn", "a.json", "b.json", "--strip-newlines"])
    assert convert._action is data_command.ConvertCommand and convert.strip_newlines
    inspect = parser.parse_args(["data", "inspect", "run.yaml", "--limit", "5"])
    assert inspect._action is data_command.InspectCommand and inspect.limit == 5
    assert set(data_command.ACTIONS) == {"llava-to-single-turn", "inspect", "check", "synth"}
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "no-such-action"])
