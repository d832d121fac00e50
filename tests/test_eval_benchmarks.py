"""The benchmark readers on files in the official layouts, and ``mmtune eval --task NAME`` end to end
with a tiny model: the results file, the predictions file (re-scored to the same metrics), the
submission file, LLaVA-1.5's prompts and ``--prompt``, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench_factory as bf
from mmtune.cli import main
from mmtune.evaluation.benchmarks.common import BenchFiles
from mmtune.evaluation.tasks import BENCHMARKS, OPTION_LETTER, SHORT_ANSWER


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return bf.tiny_model(tmp_path_factory.mktemp("model"))


def _files(made: dict, **kw) -> BenchFiles:
    data = made["data"] if isinstance(made["data"], list) else [made["data"]]
    return BenchFiles([str(d) for d in data], str(made["annotations"]) if "annotations" in made else None,
                      str(made["images"]) if "images" in made else None, **kw)


def _user(item) -> str:
    return item.record.messages[-1].content


def test_vqav2_reader(tmp_path):
    items = BENCHMARKS["vqav2"].read(_files(bf.vqav2(tmp_path)), SHORT_ANSWER)
    assert [i.ident for i in items] == [{"question_id": 420}, {"question_id": 421}, {"question_id": 70}]
    assert _user(items[0]) == "<image>\nHow many dogs are there?\nAnswer the question using a single word or phrase."
    assert Path(items[2].record.image).name == "COCO_val2014_000000000007.jpg"
    assert items[0].references == bf.HUMANS[0] and items[1].kind == "yes/no"


def test_vqav2_test_dev_questions_use_the_test2015_images(tmp_path):
    made = bf.vqav2(tmp_path)
    data = json.loads(made["data"].read_text())
    made["data"].write_text(json.dumps({**data, "data_subtype": "test-dev2015"}))
    for image_id in (42, 7):
        bf.write_image(tmp_path / "test2015" / f"COCO_test2015_{image_id:012d}.jpg", image_id)
    files = BenchFiles([str(made["data"])], image_root=str(tmp_path / "test2015"))
    items = BENCHMARKS["vqav2"].read(files, SHORT_ANSWER)
    assert Path(items[0].record.image).name == "COCO_test2015_000000000042.jpg" and items[0].references == []


def test_textvqa_gqa_readers(tmp_path):
    text = BENCHMARKS["textvqa"].read(_files(bf.textvqa(tmp_path / "t")), SHORT_ANSWER)
    assert text[0].ident == {"question_id": 34602} and len(text[0].references) == 10
    assert _user(text[0]) == "<image>\nwhat brand is this?\nAnswer the question using a single word or phrase."
    assert Path(text[1].record.image).name == "005635e119b9f32f.jpg"
    gqa = BENCHMARKS["gqa"].read(_files(bf.gqa(tmp_path / "g")), SHORT_ANSWER)
    assert [i.ident["question_id"] for i in gqa] == ["20968379", "201640614"]
    assert gqa[1].references == ["cup"] and gqa[1].kind == "query"


def test_pope_reader_splits_by_file(tmp_path):
    items = BENCHMARKS["pope"].read(_files(bf.pope(tmp_path)), SHORT_ANSWER)
    assert [i.kind for i in items] == ["random"] * 3 + ["adversarial"] * 3
    assert items[1].references == ["no"] and items[4].ident == {"question_id": 2, "split": "adversarial"}


def test_pope_split_comes_from_category_when_a_line_has_one(tmp_path):
    made = bf.pope(tmp_path)
    lines = [json.loads(x) for x in made["data"][0].read_text().splitlines()]
    made["data"][0].write_text("".join(json.dumps({**x, "category": "popular"}) + "\n" for x in lines))
    items = BENCHMARKS["pope"].read(_files(made), SHORT_ANSWER)
    assert [i.kind for i in items] == ["popular"] * 3 + ["adversarial"] * 3


def test_empty_prompt_asks_the_bare_question(tmp_path):
    items = BENCHMARKS["pope"].read(_files(bf.pope(tmp_path)), "")
    assert _user(items[0]) == "<image>\nIs there a dog in the image?"


def test_mmbench_reader_rotates_options(tmp_path):
    items = BENCHMARKS["mmbench"].read(_files(bf.mmbench(tmp_path)), OPTION_LETTER)
    assert [(i.ident["index"], i.ident["round"]) for i in items] == [("0", 0), ("0", 1), ("0", 2), ("1", 0), ("1", 1)]
    assert _user(items[0]) == ("<image>\nWhat is the colour of the shape?\nA. red\nB. blue\nC. green\n"
                               "Answer with the option's letter from the given choices directly.")
    # blue (B) moves to A, then to C, as the options rotate
    assert [i.references[0] for i in items[:3]] == ["B", "A", "C"]
    assert _user(items[3]).startswith("<image>\nA picture from a zoo.\nWhich animal is shown?\nA. cat\nB. dog")
    assert items[3].record.image == items[0].record.image  # row 1's image field names row 0
    assert items[3].kind == "object_localization"


def test_scienceqa_reader_takes_image_questions_of_the_split(tmp_path):
    items = BENCHMARKS["scienceqa"].read(_files(bf.scienceqa(tmp_path)), OPTION_LETTER)
    assert [i.ident for i in items] == [{"pid": "5"}, {"pid": "9"}]
    assert items[0].references == ["B"] and items[1].references == ["B"]
    assert _user(items[1]) == ("<image>\nContext: Look at the object.\nWhich material is this?\nA. wood\n"
                               "B. glass\nAnswer with the option's letter from the given choices directly.")
    val = BENCHMARKS["scienceqa"].read(_files(bf.scienceqa(tmp_path), split="val"), OPTION_LETTER)
    assert [i.ident for i in val] == [{"pid": "12"}]


def test_scienceqa_images_directly_under_the_root(tmp_path):
    made = bf.scienceqa(tmp_path)
    items = BENCHMARKS["scienceqa"].read(_files({**made, "images": made["images"] / "test"}), OPTION_LETTER)
    assert [Path(i.record.image).parent.name for i in items] == ["5", "9"]


def test_coco_readers_both_layouts(tmp_path):
    karpathy = BENCHMARKS["coco-caption"].read(_files(bf.coco_karpathy(tmp_path / "k")), "Describe.")
    assert [i.ident for i in karpathy] == [{"image_id": 11}, {"image_id": 12}]  # the test split only
    assert len(karpathy[0].references) == 2 and _user(karpathy[0]) == "<image>\nDescribe."
    official = BENCHMARKS["coco-caption"].read(_files(bf.coco_official(tmp_path / "o")), "Describe.")
    assert official[0].references == ["A red shape.", "Something red."] and official[1].references == ["Blue."]


def _eval(model: Path, task: str, made: dict, tmp_path: Path, *extra: str) -> tuple[dict, list[dict]]:
    data = made["data"] if isinstance(made["data"], list) else [made["data"]]
    argv = ["eval", "--model", str(model), "--task", task, "--data", *map(str, data), "--device", "cpu",
            "--max-new-tokens", "3", "--batch-size", "4", "--out", str(tmp_path / "r.json"),
            "--predictions", str(tmp_path / "p.jsonl"), *extra]
    if "annotations" in made:
        argv += ["--annotations", str(made["annotations"])]
    if "images" in made:
        argv += ["--image-root", str(made["images"])]
    assert main(argv) == 0
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    return json.loads((tmp_path / "r.json").read_text()), lines


def _rescored(task: str, made: dict, lines: list[dict]) -> dict:
    """The metrics of the predictions file's answers, scored again from the files."""
    items = BENCHMARKS[task].read(_files(made), BENCHMARKS[task].prompt)
    assert len(items) == len(lines)
    for item, line in zip(items, lines):
        assert {k: line[k] for k in item.ident} == item.ident
        item.prediction = line["answer"]
    return json.loads(json.dumps(BENCHMARKS[task].score(items)))


@pytest.mark.parametrize("task, factory, id_field, keys", [
    ("vqav2", bf.vqav2, "question_id", {"accuracy", "by_answer_type"}),
    ("textvqa", bf.textvqa, "question_id", {"accuracy"}),
    ("gqa", bf.gqa, "question_id", {"accuracy", "by_type"}),
    ("pope", bf.pope, "question_id", {"accuracy", "precision", "recall", "f1", "yes_ratio", "by_split"}),
    ("mmbench", bf.mmbench, "index", {"accuracy", "by_category", "single_pass_accuracy"}),
    ("scienceqa", bf.scienceqa, "pid", {"accuracy", "by_subject"}),
    ("coco-caption", bf.coco_karpathy, "image_id", {"bleu1", "bleu4", "rouge_l", "cider"}),
])
def test_eval_command_end_to_end(model, tmp_path, task, factory, id_field, keys):
    made = factory(tmp_path / "files")
    result, lines = _eval(model, task, made, tmp_path)
    assert result["task"] == task and result["model"] == str(model) and result["prompt"] == BENCHMARKS[task].prompt
    assert result["template"] == "alpaca" and result["data"] == [str(d) for d in _files(made).data]
    assert result["count"] == len(lines) and keys <= set(result["metrics"])
    assert all(id_field in line and isinstance(line["answer"], str) for line in lines)
    assert result["metrics"] == _rescored(task, made, lines)


def test_prompt_override_and_limit(model, tmp_path):
    made = bf.mmbench(tmp_path / "files")
    result, lines = _eval(model, "mmbench", made, tmp_path, "--prompt", "Pick one.", "--limit", "1")
    assert result["prompt"] == "Pick one." and result["count"] == 3  # every rotation of the first question
    assert {line["index"] for line in lines} == {"0"} and [line["round"] for line in lines] == [0, 1, 2]


def test_limit_takes_the_first_questions_of_each_pope_split(model, tmp_path):
    result, lines = _eval(model, "pope", bf.pope(tmp_path / "files"), tmp_path, "--limit", "1")
    assert result["count"] == 2 and [(x["split"], x["question_id"]) for x in lines] == [("random", 1),
                                                                                         ("adversarial", 1)]


def test_vqav2_without_annotations_writes_the_submission(model, tmp_path, capsys):
    made = bf.vqav2(tmp_path / "files")
    del made["annotations"]
    result, lines = _eval(model, "vqav2", made, tmp_path, "--submission", str(tmp_path / "sub.json"))
    assert "metrics" not in result and result["count"] == 3
    submission = json.loads((tmp_path / "sub.json").read_text())
    assert [s["question_id"] for s in submission] == [420, 421, 70]
    (tmp_path / "test2015.json").write_text(json.dumps({"questions": [
        {"image_id": 42, "question": "q", "question_id": 420}, {"image_id": 9, "question": "q", "question_id": 90}]}))
    _eval(model, "vqav2", made, tmp_path, "--submission", str(tmp_path / "all.json"),
          "--submission-questions", str(tmp_path / "test2015.json"))
    filled = json.loads((tmp_path / "all.json").read_text())
    assert [s["question_id"] for s in filled] == [420, 421, 70, 90] and filled[-1]["answer"] == ""
    assert "no answers to score" in capsys.readouterr().out


@pytest.mark.parametrize("task, breaks, message", [
    ("vqav2", lambda m: m["data"].write_text('{"questions": [{"image_id": 42}]}'), "has no field 'question_id'"),
    ("vqav2", lambda m: m["data"].write_text('[1, 2]'), "expected the VQAv2 questions layout"),
    ("vqav2", lambda m: (m["images"] / "COCO_val2014_000000000007.jpg").unlink(), "image of question 70 not found"),
    ("pope", lambda m: m["data"][0].write_text('{"question_id": 1, "image": "x.jpg", "text": "?", "label": "maybe"}\n'),
     "label 'maybe'"),
    ("scienceqa", lambda m: m.pop("annotations"), "needs --annotations pid_splits.json"),
    ("mmbench", lambda m: m["data"].write_text("index\tquestion\n0\tq\n"), "no column 'A'"),
])
def test_bad_files_are_one_line_errors(model, tmp_path, capsys, task, breaks, message):
    made = {"vqav2": bf.vqav2, "pope": bf.pope, "scienceqa": bf.scienceqa, "mmbench": bf.mmbench}[task](tmp_path)
    breaks(made)
    data = made["data"] if isinstance(made["data"], list) else [made["data"]]
    argv = ["eval", "--model", str(model), "--task", task, "--data", *map(str, data), "--device", "cpu"]
    argv += ["--annotations", str(made["annotations"])] if "annotations" in made else []
    argv += ["--image-root", str(made["images"])] if "images" in made else []
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_task_names_every_task(model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["eval", "--model", str(model), "--task", "mme", "--data", "x"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "invalid choice: 'mme'" in err
    assert all(name in err for name in [*BENCHMARKS, "caption", "vqa"])


def test_mmbench_test_split_without_answers_is_answered_not_scored(model, tmp_path):
    made = bf.mmbench(tmp_path / "files")
    rows = made["data"].read_text().splitlines()
    header = rows[0].split("\t")
    drop = header.index("answer")
    made["data"].write_text("\n".join("\t".join(c for i, c in enumerate(r.split("\t")) if i != drop)
                                      for r in rows) + "\n")
    result, lines = _eval(model, "mmbench", made, tmp_path)
    assert "metrics" not in result and len(lines) == 5


def test_default_device_is_the_gpu_when_there_is_one(monkeypatch):
    import argparse

    import torch

    from mmtune.commands.eval import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = argparse.Namespace(device=None)
    _device(args)
    assert args.device == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = argparse.Namespace(device=None)
    _device(args)
    assert args.device == "cpu"


def test_auto_dtype_is_bf16_on_the_gpu(monkeypatch, model):
    import argparse

    import torch

    from mmtune.commands import serving_options

    seen = {}
    monkeypatch.setattr(serving_options.Engine, "from_dir", lambda path, **kw: seen.update(kw))
    for device, dtype in (("cuda", torch.bfloat16), ("cpu", torch.float32)):
        args = argparse.Namespace(model=str(model), device=device, dtype="auto", template="llava_v1")
        serving_options.engine_from_args(args)
        assert seen["dtype"] == dtype
