"""The synthetic world: determinism, held-out disjointness, the grammar, rendering, the writers."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image

from mmtune.data.synth import (
    PHRASINGS,
    Scene,
    Shape,
    WorldSizes,
    caption,
    caption_correct,
    is_held_out,
    parse_caption,
    questions,
    render,
    sample_scene,
    sample_scenes,
    text_task,
    write_world,
)
from mmtune.data.synth.grammar import CAPTION_PROMPTS, NUMBERS
from mmtune.data.synth.world import COLOURS, POSITIONS, scene_key

TINY = WorldSizes(stage1_images=30, stage2_images=20, stage2_text=10, heldout_images=12, heldout_text=6,
                  shard_size=16)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_world(tmp_path_factory.mktemp("world"), seed=3, sizes=TINY)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_world_is_deterministic_in_its_seed(world, tmp_path):
    again = write_world(tmp_path / "again", seed=3, sizes=TINY)
    assert _digest(again) == _digest(world)
    other = write_world(tmp_path / "other", seed=4, sizes=TINY)
    differs = [name for name, h in _digest(other).items() if _digest(world).get(name) != h]
    assert "stage2/llava.json" in differs and "stage1/00000.tar" in differs


def test_held_out_scenes_are_never_trained_on():
    train = sample_scenes(1, 3000, held_out=False)
    heldout = sample_scenes(2, 300, held_out=True)
    assert all(is_held_out(s) for s in heldout) and not any(is_held_out(s) for s in train)
    assert not {scene_key(s) for s in train} & {scene_key(s) for s in heldout}
    # the held-out part is a real slice of the world: about a tenth of single-shape combinations
    singles = {scene_key(s) for s in train + heldout if len(s.shapes) == 1}
    assert 0.02 < sum(is_held_out(Scene((Shape(*reversed(k[0])),))) for k in singles) / len(singles) < 0.3


def test_written_heldout_facts_are_disjoint_from_training(world):
    import webdataset as wds

    trained = set()
    for sample in wds.WebDataset(sorted(str(p) for p in (world / "stage1").glob("*.tar")), shardshuffle=False):
        assert set(sample) >= {"__key__", "jpg", "txt", "json"}
        meta = json.loads(sample["json"])
        assert meta["caption"] == sample["txt"].decode() and meta["status"] == "success"
        trained.add(tuple(sorted(map(tuple, meta["scene"]))))
    assert len(trained) > 20
    held = [json.loads(line) for line in (world / "heldout" / "captions.jsonl").read_text().splitlines()]
    assert len(held) == TINY.heldout_images
    assert not trained & {tuple(sorted(map(tuple, r["scene"]))) for r in held}


@pytest.mark.parametrize("phrasing", sorted(PHRASINGS))
def test_parser_round_trips_every_phrasing(phrasing):
    rng = random.Random(phrasing)
    for _ in range(200):
        scene = sample_scene(rng)
        text = caption(scene, phrasing)
        parsed = parse_caption(text)
        assert parsed is not None and set(parsed.facts) == scene.facts, text
        assert len(parsed.facts) == len(scene.shapes)
        assert parsed.count in (None, len(scene.shapes))
        assert caption_correct(text, scene) and caption_correct(text.upper().replace(" .", "."), scene)
        # the tokenizer's decoder spaces punctuation out: the parser reads that too
        assert caption_correct(text.replace(".", " .").replace(":", " :").replace(",", " ,"), scene)


def test_phrasings_differ():
    scene = Scene((Shape("top left", "circle", "red"), Shape("bottom right", "square", "blue")))
    texts = {caption(scene, p) for p in PHRASINGS}
    assert len(texts) == len(PHRASINGS)
    assert caption(scene, "counted") == "two shapes: a red circle at the top left and a blue square at the bottom right."


def test_wrong_captions_are_rejected():
    scene = Scene((Shape("top left", "circle", "red"), Shape("bottom right", "square", "blue")))
    good = "a red circle in the top left and a blue square in the bottom right."
    assert caption_correct(good, scene)
    for bad in [
        "a red circle in the top left.",                                                     # missing shape
        "a green circle in the top left and a blue square in the bottom right.",             # colour
        "a red triangle in the top left and a blue square in the bottom right.",             # kind
        "a red circle in the top right and a blue square in the bottom right.",              # position
        "a red circle in the top left, a blue square in the bottom right and a red circle.",  # half-stated
        "three shapes: a red circle at the top left and a blue square at the bottom right.",  # count
        "a red circle in the top left and a blue square in the bottom right and a red circle in the top left.",
        "", "nothing here.", "a red blue circle in the top left and a blue square in the bottom right.",
    ]:
        assert not caption_correct(bad, scene), bad


def test_render_draws_each_shape_in_its_cell():
    scene = Scene((Shape("top left", "square", "red", scale=1.0),
                   Shape("bottom right", "circle", "yellow", scale=1.0)), background=(20, 20, 20))
    image = render(scene, 32)
    assert image.size == (32, 32) and image.mode == "RGB"
    assert image.getpixel((8, 8)) == COLOURS["red"]
    assert image.getpixel((24, 24)) == COLOURS["yellow"]
    assert image.getpixel((24, 8)) == (20, 20, 20) and image.getpixel((8, 24)) == (20, 20, 20)


def test_questions_answer_from_the_scene():
    rng = random.Random(0)
    for _ in range(300):
        scene = sample_scene(rng)
        for q, a in questions(scene, rng):
            if q == "how many shapes are there?":
                assert a == NUMBERS[len(scene.shapes)]
            elif q.startswith("what shape is in the "):
                shape = scene.at(q[len("what shape is in the "):-1])
                assert a == (shape.kind if shape else "nothing")
            elif q.startswith("is there a "):
                colour, kind = q[len("is there a "):-1].split()
                assert a == ("yes" if (kind, colour) in {(s.kind, s.colour) for s in scene.shapes} else "no")
            elif q == "where is it?":
                assert a in POSITIONS


def test_text_tasks_are_right():
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        r = text_task(rng)
        seen.add(r["instruction"])
        if r["instruction"] == "count the words.":
            assert r["output"] == NUMBERS[len(r["input"].split())]
        if r["instruction"] == "what number comes after this one?":
            assert NUMBERS.index(r["output"]) == NUMBERS.index(r["input"]) + 1
        if r["instruction"] == "which number is larger?":
            a, _, b = r["input"].split()
            assert r["output"] == max(a, b, key=NUMBERS.index)
    assert len(seen) >= 6


def test_stage2_files_follow_llava_and_alpaca(world):
    llava = json.loads((world / "stage2" / "llava.json").read_text())
    assert len(llava) == TINY.stage2_images
    for record in llava:
        conv = record["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in conv[1:])
        with Image.open(world / "images" / record["image"]) as image:
            assert image.size == (32, 32)
    captioned = [r for r in llava if r["conversations"][0]["value"][len("<image>\n"):] in CAPTION_PROMPTS]
    assert captioned and all(parse_caption(r["conversations"][1]["value"]).facts for r in captioned)
    alpaca = json.loads((world / "stage2" / "alpaca.json").read_text())
    assert len(alpaca) == TINY.stage2_text and set(alpaca[0]) == {"instruction", "input", "output"}
    vqa = json.loads((world / "heldout" / "vqa.json").read_text())
    assert all((world / "heldout" / r["image"]).is_file() for r in vqa)


def test_tokenizer_covers_the_world_without_unknowns(world):
    from tokenizers import Tokenizer

    from mmtune.data.synth.writers import world_texts

    tok = Tokenizer.from_file(str(world / "tokenizer" / "tokenizer.json"))
    assert [tok.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<pad>")] == [0, 1, 2, 3]
    for text in world_texts(world):
        ids = tok.encode(text.replace("<image>", "")).ids
        assert 0 not in ids, text
    text = "Top left: red circle; bottom right: blue square."
    decoded = tok.decode(tok.encode(text).ids)
    assert parse_caption(decoded) == parse_caption(text) and decoded.startswith("top left")
    config = json.loads((world / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["bos_token"] == "<s>" and config["pad_token"] == "<pad>"


def test_stage1_images_decode(world):
    import webdataset as wds

    sample = next(iter(wds.WebDataset(str(world / "stage1" / "00000.tar"), shardshuffle=False)))
    with Image.open(io.BytesIO(sample["jpg"])) as image:
        assert image.size == (32, 32)
