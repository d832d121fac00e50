"""The LLaVA -> single-turn converter against a re-implementation of LLaMA2-Accessory's tool."""

from __future__ import annotations

import copy
import json

import pytest

from mmtune.data.convert import ConvertReport, llava_to_single_turn, split_record
from mmtune.errors import DataError

RECORDS = [
    {"id": "000000033471", "image": "000000033471.jpg", "conversations": [
        {"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
        {"from": "gpt", "value": "The bus in the image is white and red."},
        {"from": "human", "value": "What feature can be seen on the back of the bus?"},
        {"from": "gpt", "value": "The back of the bus features:\n1. an advertisement\n2. a \u00e9 sign"}]},
    {"id": "x", "image": "x.jpg", "extra": 3.5, "conversations": [
        {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A scene.\n\nWith two parts."},
        {"from": "human", "value": "Dangling question?"}]},
]


def _old_tool(data: list) -> str:
    """tools/llava_to_single_turn.py of LLaMA2-Accessory, as /work/shared/reference describes it."""
    new_data = []
    for item in data:
        conv = item["conversations"]
        for i in range(len(conv) // 2):
            new_item = copy.deepcopy(item)
            new_item["conversations"] = [copy.deepcopy(conv[2 * i]), copy.deepcopy(conv[2 * i + 1])]
            for turn in new_item["conversations"]:
                for key in turn:
                    turn[key] = turn[key].replace("<image>", "").replace("\n", "")
            new_data.append(new_item)
    return json.dumps(new_data)


def test_strip_newlines_reproduces_the_old_output_byte_for_byte(tmp_path):
    src = tmp_path / "llava_instruct_150k.json"
    src.write_text(json.dumps(RECORDS, indent=2))
    report = llava_to_single_turn(src, tmp_path / "old.json", strip_newlines=True, progress=False)
    assert (tmp_path / "old.json").read_text() == _old_tool(RECORDS)
    assert (report.records, report.written, report.problems) == (2, 3, 1)


def test_default_keeps_newlines_makes_ids_unique_and_keeps_fields(tmp_path):
    src = tmp_path / "in.json"
    src.write_text(json.dumps(RECORDS))
    report = llava_to_single_turn(src, tmp_path / "out.json", image_prefix="coco/train2017/", progress=False)
    out = json.loads((tmp_path / "out.json").read_text())
    assert [r["id"] for r in out] == ["000000033471_0", "000000033471_1", "x_0"]
    assert out[1]["conversations"][1]["value"] == "The back of the bus features:\n1. an advertisement\n2. a \u00e9 sign"
    assert out[0]["conversations"][0]["value"] == "What are the colors of the bus in the image?"
    assert out[2]["conversations"] == [{"from": "human", "value": "Describe."},
                                       {"from": "gpt", "value": "A scene.\n\nWith two parts."}]
    assert out[2]["image"] == "coco/train2017/x.jpg" and out[2]["extra"] == 3.5
    assert list(out[2]) == ["id", "image", "extra", "conversations"]
    assert report.examples == ["record x: odd number of turns (3); the last one is dropped"]


def test_out_of_order_and_non_text_turns_are_reported_and_skipped():
    item = {"id": "q", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"},
                                         {"from": "human", "value": "c"}, {"from": "gpt", "value": "d"},
                                         {"from": "human", "value": None}, {"from": "gpt", "value": "e"}]}
    report = ConvertReport()
    out = split_record(item, report)
    assert [r["id"] for r in out] == ["q_1"]
    assert report.problems == 2
    assert report.examples[0] == "record q: turns 0-1 come from 'gpt', 'human' (expected 'human', 'gpt'); skipped"
    assert "turns 4-5 are not" in report.examples[1]
    assert split_record({"id": "n"}, report) == [] and report.examples[-1] == "record n: no 'conversations' list; skipped"


def test_the_input_is_streamed_not_loaded_whole(tmp_path, monkeypatch):
    src = tmp_path / "big.json"
    src.write_text(json.dumps(RECORDS * 50))
    monkeypatch.setattr(json, "load", lambda *a, **k: pytest.fail("json.load reads the whole file"))
    report = llava_to_single_turn(src, tmp_path / "o.json", progress=False)
    assert report.written == 150


def test_malformed_or_missing_input_is_a_data_error(tmp_path):
    (tmp_path / "bad.json").write_text('[{"id": 1, "conversations": [}')
    with pytest.raises(DataError, match="not a valid JSON array"):
        llava_to_single_turn(tmp_path / "bad.json", tmp_path / "o.json", progress=False)
    with pytest.raises(DataError, match="input file not found"):
        llava_to_single_turn(tmp_path / "none.json", tmp_path / "o.json", progress=False)
