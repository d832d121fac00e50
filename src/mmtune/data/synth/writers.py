"""Writes the synthetic world to disk in the formats real users have.

Layout of ``write_world(out_dir)``::

    stage1/{00000..0000N}.tar      webdataset shards, img2dataset layout: {key}.jpg, {key}.txt, {key}.json
    stage2/llava.json              LLaVA-Instruct JSON (multi-turn VQA, caption requests), images in images/
    stage2/alpaca.json             Alpaca JSON (text-only instructions)
    images/                        the stage-2 training images
    heldout/captions.jsonl         held-out images with every phrasing of their caption and their facts
    heldout/vqa.json               LLaVA JSON of questions on held-out images
    heldout/alpaca.json            held-out text-only instructions
    heldout/images/                the held-out images (scenes training never sees)
    tokenizer/tokenizer.json       the word-level tokenizer the quickstart model uses
    world.json                     the seed and sizes, for the record
"""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from mmtune.data.synth.grammar import CAPTION_PROMPTS, PHRASINGS, caption
from mmtune.data.synth.tasks import questions, text_task
from mmtune.data.synth.world import Scene, render, sample_scenes

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")
_MTIME = 1_700_000_000.0  # fixed tar member times, so shards are byte-identical for a seed


@dataclass
class WorldSizes:
    """How many records of each kind ``write_world`` writes."""

    stage1_images: int = 12000
    """Captioned images for stage 1 (webdataset shards)."""
    stage2_images: int = 12000
    """Images with conversations for stage 2 (LLaVA JSON)."""
    stage2_text: int = 6000
    """Text-only instructions for stage 2 (Alpaca JSON)."""
    heldout_images: int = 200
    """Held-out images for evaluation (captions and questions)."""
    heldout_text: int = 200
    """Held-out text-only instructions."""
    shard_size: int = 1000
    """Samples per webdataset shard."""
    caption_request_fraction: float = 0.3
    """Share of stage-2 conversations that start by asking for a caption (so stage 2 still captions)."""


def _jpeg(scene: Scene, size: int) -> bytes:
    buf = io.BytesIO()
    render(scene, size).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _scene_record(scene: Scene) -> list[list[str]]:
    return [list(s.fact) for s in scene.shapes]


def _write_stage1(out: Path, scenes: list[Scene], rng: random.Random, sizes: WorldSizes, image_size: int) -> None:
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    phrasings = sorted(PHRASINGS)
    n_shards = (len(scenes) + sizes.shard_size - 1) // sizes.shard_size
    for shard in range(n_shards):
        part = scenes[shard * sizes.shard_size:(shard + 1) * sizes.shard_size]
        with open(out / f"{shard:05d}.tar", "wb") as f:
            writer = wds.TarWriter(f, mtime=_MTIME)
            for i, scene in enumerate(tqdm(part, desc=f"stage1 shard {shard}", leave=False)):
                key = f"{shard:05d}{i:04d}"
                text = caption(scene, rng.choice(phrasings))
                meta = {"key": key, "caption": text, "status": "success", "width": image_size,
                        "height": image_size, "url": f"synth://{key}", "scene": _scene_record(scene)}
                writer.write({"__key__": key, "jpg": _jpeg(scene, image_size), "txt": text,
                              "json": json.dumps(meta).encode()})
            writer.close()
        (out / f"{shard:05d}_stats.json").write_text(json.dumps({"count": len(part), "successes": len(part)}))


def _conversation(scene: Scene, rng: random.Random, caption_first: bool) -> list[dict]:
    turns = questions(scene, rng)
    if caption_first:
        turns = [(rng.choice(CAPTION_PROMPTS), caption(scene, rng.choice(sorted(PHRASINGS))))] + turns[:2]
    conv = []
    for i, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": f"<image>\n{q}" if i == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return conv


def _write_images(folder: Path, prefix: str, scenes: list[Scene], image_size: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, scene in enumerate(tqdm(scenes, desc=f"{prefix} images", leave=False)):
        name = f"{prefix}{i:06d}.jpg"
        (folder / name).write_bytes(_jpeg(scene, image_size))
        names.append(name)
    return names


def _dump(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _write_stage2(out: Path, scenes: list[Scene], rng: random.Random, sizes: WorldSizes, image_size: int) -> None:
    names = _write_images(out / "images", "train", scenes, image_size)
    records = [{"id": name[:-4], "image": name,
                "conversations": _conversation(scene, rng, rng.random() < sizes.caption_request_fraction)}
               for name, scene in zip(names, scenes)]
    _dump(out / "stage2" / "llava.json", records)
    _dump(out / "stage2" / "alpaca.json", [text_task(rng) for _ in range(sizes.stage2_text)])


def _write_heldout(out: Path, scenes: list[Scene], rng: random.Random, sizes: WorldSizes, image_size: int) -> None:
    folder = out / "heldout"
    names = _write_images(folder / "images", "heldout", scenes, image_size)
    with open(folder / "captions.jsonl", "w") as f:
        for name, scene in zip(names, scenes):
            refs = [caption(scene, p) for p in sorted(PHRASINGS)]
            f.write(json.dumps({"image": f"images/{name}", "caption": refs, "scene": _scene_record(scene)}) + "\n")
    vqa = [{"id": name[:-4], "image": f"images/{name}", "conversations": _conversation(scene, rng, False)}
           for name, scene in zip(names, scenes)]
    _dump(folder / "vqa.json", vqa)
    _dump(folder / "alpaca.json", [text_task(rng) for _ in range(sizes.heldout_text)])


def world_texts(out_dir: str | Path) -> Iterable[str]:
    """Every text the written world contains (captions, questions, answers, instructions)."""
    out = Path(out_dir)
    for shard in sorted((out / "stage1").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".txt"):
                    yield tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    for path in [out / "stage2" / "llava.json", out / "heldout" / "vqa.json"]:
        for record in json.loads(path.read_text()):
            yield from (turn["value"] for turn in record["conversations"])
    for path in [out / "stage2" / "alpaca.json", out / "heldout" / "alpaca.json"]:
        for record in json.loads(path.read_text()):
            yield from (record["instruction"], record["input"], record["output"])
    for line in (out / "heldout" / "captions.jsonl").read_text().splitlines():
        yield from json.loads(line)["caption"]


def template_texts() -> list[str]:
    """The fixed text of every prompt template (intros, headers, system prompts), for the vocabulary."""
    from mmtune.data.records import Message, Record, caption_record
    from mmtune.data.templates import TEMPLATES
    from mmtune.errors import DataError

    user, answer = Message("user", "x", input="y"), Message("assistant", "z")
    records = [Record((user, answer, Message("user", "x"), answer)),
               Record((Message("system", "s"), Message("user", "x"), answer)),
               caption_record("z", prefix="p")]
    texts = []
    for template in TEMPLATES.values():
        for record in records:
            try:
                texts.extend(seg.text for seg in template.render(record) if seg.kind == "text")
            except DataError:
                continue
    return texts


def write_tokenizer(out_dir: str | Path, texts: Iterable[str]) -> Path:
    """Writes a word-level tokenizer (tokenizer.json + tokenizer_config.json) covering ``texts``.

    Words are lower-cased runs of letters/digits and runs of punctuation; anything else maps to
    ``<unk>``. Ids 0-3 are ``<unk> <s> </s> <pad>`` as in LLaMA's layout (plus pad).
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    words: set[str] = set()
    for text in texts:
        words.update(re.findall(r"\w+|[^\w\s]+", text.replace("<image>", " ").lower()))
    words -= set(SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(sorted(words)))}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": False, "add_eos_token": False,
              "model_max_length": 4096, "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return out


def write_world(out_dir: str | Path, seed: int = 0, image_size: int = 32, sizes: WorldSizes | None = None,
                extra_texts: Iterable[str] = ()) -> Path:
    """Generates the whole world under ``out_dir`` (see the module docstring); deterministic in ``seed``.

    The tokenizer's vocabulary covers the world, every prompt template and ``extra_texts``.
    """
    sizes = sizes or WorldSizes()
    out = Path(out_dir)
    rng = random.Random(seed)
    stage1 = sample_scenes(seed * 4 + 1, sizes.stage1_images, held_out=False)
    stage2 = sample_scenes(seed * 4 + 2, sizes.stage2_images, held_out=False)
    heldout = sample_scenes(seed * 4 + 3, sizes.heldout_images, held_out=True)
    _write_stage1(out / "stage1", stage1, rng, sizes, image_size)
    _write_stage2(out, stage2, rng, sizes, image_size)
    _write_heldout(out, heldout, rng, sizes, image_size)
    write_tokenizer(out / "tokenizer", [*world_texts(out), *template_texts(), *extra_texts])
    _dump(out / "world.json", {"seed": seed, "image_size": image_size, "sizes": vars(sizes)})
    return out
