"""`mmtune eval` and the evaluation runner: items from every format, batching, scores, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmtune.cli import main
from mmtune.data.synth import WorldSizes, write_world
from mmtune.evaluation.metrics import bleu, cider_d
from mmtune.evaluation.runner import Predictor, load_items, score_captions, score_vqa

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SIZES = WorldSizes(stage1_images=12, stage2_images=6, stage2_text=4, heldout_images=10, heldout_text=6, shard_size=8)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_world(tmp_path_factory.mktemp("world"), seed=1, sizes=SIZES)


def _saved_model(world: Path, out: Path, config: str) -> Path:
    from mmtune.config import load_config
    from mmtune.models.io import save_model
    from mmtune.models.tokenizer import Tokenizer
    from mmtune.models.vlm import build_model

    tokenizer = Tokenizer.from_path(world / "tokenizer")
    cfg = load_config(CONFIGS / config, ["--model.dim", "32", "--model.n_layers", "1"])
    model = build_model(cfg, tokenizer.image_token_id)
    return save_model(model, out, tokenizer=tokenizer)


@pytest.fixture(scope="module", params=["quickstart-stage1.yaml", "quickstart-qformer-stage1.yaml"])
def model_dir(request, world, tmp_path_factory) -> Path:
    return _saved_model(world, tmp_path_factory.mktemp("model"), request.param)


def test_caption_items_keep_every_reference_and_the_scene(world):
    items = load_items(str(world / "heldout" / "captions.jsonl"), "caption")
    assert len(items) == SIZES.heldout_images
    first = json.loads((world / "heldout" / "captions.jsonl").read_text().splitlines()[0])
    assert items[0].references == first["caption"] and len(items[0].references) == 6
    assert items[0].scene == first["scene"] and items[0].record.messages == ()
    asked = load_items(str(world / "heldout" / "captions.jsonl"), "caption", prompt="describe the image.", limit=3)
    assert len(asked) == 3 and asked[0].record.messages[0].content == "<image>\ndescribe the image."


def test_vqa_items_are_every_answer_with_gold_history(world):
    records = json.loads((world / "heldout" / "vqa.json").read_text())
    items = load_items(str(world / "heldout" / "vqa.json"), "vqa")
    assert len(items) == sum(len(r["conversations"]) // 2 for r in records)
    multi = next(r for r in records if len(r["conversations"]) >= 4)
    second = [i for i in items if i.record.key == multi["id"]][1]
    assert [m.content for m in second.record.messages] == [t["value"] for t in multi["conversations"][:3]]
    assert second.references == [multi["conversations"][3]["value"]]


def test_webdataset_shards_and_alpaca_load(world):
    shards = load_items(str(world / "stage1" / "{00000..00001}.tar"), "caption")
    assert len(shards) == SIZES.stage1_images and all(len(i.references) == 1 for i in shards)
    text = load_items(str(world / "heldout" / "alpaca.json"), "vqa")
    assert len(text) == SIZES.heldout_text and not any(i.record.has_image for i in text)


def test_vqav2_answers_field_is_used(tmp_path):
    data = [{"instruction": "how many?", "output": "two", "answers": ["2", "2", "two", "3"]}]
    (tmp_path / "v.json").write_text(json.dumps(data))
    items = load_items(str(tmp_path / "v.json"), "vqa")
    items[0].prediction = "2"
    # three of four humans said 2: 2/3 when one of them is left out, 1 when the "3" is
    assert score_vqa(items)["vqa_accuracy"] == pytest.approx((3 * 2 / 3 + 1) / 4)
    assert score_vqa(items)["exact_match"] == 1.0
    items[0].prediction = "three"  # one human said 3: 1/3 with the other three, 0 when it is left out
    assert score_vqa(items)["vqa_accuracy"] == pytest.approx(3 / 4 * 1 / 3)


def test_scores_of_known_predictions(world):
    items = load_items(str(world / "heldout" / "captions.jsonl"), "caption")
    for i, item in enumerate(items):
        item.prediction = item.references[i % 6] if i < 5 else "a red circle in the top left."
    scores = score_captions(items)
    hyps, refs = [i.prediction for i in items], [i.references for i in items]
    assert scores["bleu4"] == bleu(hyps, refs) and scores["cider"] == cider_d(hyps, refs)
    wrong = sum(1 for i in items[5:] if {tuple(f) for f in i.scene} != {("circle", "red", "top left")})
    assert scores["caption_accuracy"] == pytest.approx((len(items) - wrong) / len(items))
    assert scores["exact_match"] == pytest.approx((len(items) - wrong) / len(items))


def test_batched_predictions_equal_one_at_a_time(world, model_dir):
    predictor = Predictor.from_dir(str(model_dir), "llava_v1", max_new_tokens=8)
    items = load_items(str(world / "heldout" / "vqa.json"), "vqa", limit=5)
    items += load_items(str(world / "heldout" / "alpaca.json"), "vqa", limit=3)
    batched = [i.prediction for i in predictor.predict(items, batch_size=8)]
    single = [i.prediction for i in predictor.predict(items, batch_size=1)]
    assert batched == single and all(isinstance(p, str) for p in batched)


def test_caption_prefix_starts_the_prediction(world, model_dir):
    from dataclasses import replace

    predictor = Predictor.from_dir(str(model_dir), "caption", max_new_tokens=4)
    item = load_items(str(world / "heldout" / "captions.jsonl"), "caption", limit=1)[0]
    item.record = replace(item.record, prefix="there is")
    assert predictor.predict([item])[0].prediction.startswith("there is")


def test_eval_command_writes_json(world, model_dir, tmp_path, capsys):
    out = tmp_path / "scores.json"
    code = main(["eval", "--model", str(model_dir), "--data", str(world / "heldout" / "captions.jsonl"),
                 "--task", "caption", "--template", "caption", "--out", str(out), "--max-new-tokens", "6",
                 "--limit", "4"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["count"] == 4 and 0 <= result["cider"] and 0 <= result["bleu4"] <= 1
    assert "caption_accuracy" in result and len(result["samples"]) == 4
    assert "cider" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size"),
    (["--data", "/nonexistent/file.json"], "/nonexistent/file.json"),
    (["--task", "caption", "--data", "VQA"], "caption records"),
])
def test_eval_command_errors_are_one_line(world, model_dir, capsys, argv, message):
    base = {"--model": str(model_dir), "--data": str(world / "heldout" / "captions.jsonl"), "--task": "vqa"}
    args = dict(base)
    for key, value in zip(argv[::2], argv[1::2]):
        args[key] = str(world / "heldout" / "vqa.json") if value == "VQA" else value
    code = main(["eval", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_evaluation_answers_exactly_what_mmtune_generate_prints(world, model_dir, capsys):
    """Evaluation runs on the serving engine: the same prompt, image, prefix and detokenisation."""
    from dataclasses import replace

    predictor = Predictor.from_dir(str(model_dir), "llava_v1", max_new_tokens=8, system_prompt="Be brief.")
    question = load_items(str(world / "heldout" / "vqa.json"), "vqa", limit=1)[0]
    caption = load_items(str(world / "heldout" / "captions.jsonl"), "caption", limit=1)[0]
    caption.record = replace(caption.record, prefix="there is")
    predictor.predict([question, caption], batch_size=1)  # generate answers one prompt at a time
    capsys.readouterr()
    user = question.record.messages[-1].content.replace("<image>", "").strip()
    runs = [(question, ["--template", "llava_v1", "--system-prompt", "Be brief.", "--prompt", user]),
            (caption, ["--template", "llava_v1", "--system-prompt", "Be brief.", "--prefix", "there is"])]
    for item, options in runs:
        code = main(["generate", "--model", str(model_dir), "--image", str(item.record.image),
                     "--max-new-tokens", "8", *options])
        assert code == 0
        assert capsys.readouterr().out == item.prediction + "\n"
