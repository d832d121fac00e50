"""The loader: batches, exact resume (also 2 ranks -> 1), worker processes, shard partition, bad data."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from data_factory import alpaca_items, config, llava_items, write_images, write_json, write_shards
from mmtune.config import SourceConfig
from mmtune.data.batch import Batch
from mmtune.data.encode import IGNORE_INDEX
from mmtune.data.images import ImageTransform
from mmtune.data.loader import build_loader
from mmtune.data.processor import Processor
from mmtune.errors import DataError
from mmtune.models.tokenizer import Tokenizer
from mmtune.models.vision import ImageSettings

IMAGE_TOKENS = 4
SETTINGS = ImageSettings(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "center_crop", 10_000_000)


@pytest.fixture(scope="module")
def tok(llama_tokenizer_dir):
    return Tokenizer.from_path(llama_tokenizer_dir)


@pytest.fixture
def mixed(tmp_path):
    """A LLaVA source with images (14 records) and an Alpaca source (9 text-only records)."""
    names = write_images(tmp_path / "imgs", 5)
    llava = write_json(tmp_path / "llava.json", llava_items(14, names))
    alpaca = write_json(tmp_path / "alpaca.json", alpaca_items(9))
    return [SourceConfig(path=str(llava), image_root=str(tmp_path / "imgs")),
            SourceConfig(path=str(alpaca), template="alpaca")]


def _loader(cfg, tok, rank=0, world=1, seed=0):
    processor = Processor(tok, IMAGE_TOKENS, "placeholder", ImageTransform.from_settings(SETTINGS))
    return build_loader(cfg, processor, rank=rank, world_size=world, seed=seed)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _same(a: list[Batch], b: list[Batch]) -> bool:
    def fields(x: Batch) -> list:
        return [getattr(x, f.name) for f in dataclasses.fields(x)]

    return len(a) == len(b) and all(
        all(torch.equal(u, v) if torch.is_tensor(u) and torch.is_tensor(v) else u == v
            for u, v in zip(fields(x), fields(y))) for x, y in zip(a, b))


def _answers(batch: Batch, tok) -> list[str]:
    """The supervised text of each row (padded batching: one sample per row)."""
    out = []
    for ids, labels in zip(batch.input_ids, batch.labels):
        targets = labels[labels != IGNORE_INDEX]
        out.append(tok.decode([t for t in targets.tolist() if t != tok.eos_id]).strip())
    return out


def test_batches_mix_text_only_and_image_rows_with_the_documented_keys(mixed, tok):
    loader = _loader(config(mixed, micro=4), tok)
    batches = list(loader)
    assert loader.rows_per_epoch == 23 and loader.epoch == 1
    first = batches[0]
    assert first.input_ids.shape == first.labels.shape == (4, 64)
    n_images = int((torch.cat([b.input_ids for b in batches]) == tok.image_token_id).sum()) // IMAGE_TOKENS
    assert sum(len(b.pixel_values) for b in batches if b.pixel_values is not None) == n_images
    assert any(b.pixel_values is not None and len(b.pixel_values) < 4 for b in batches)
    assert first.pixel_values is None or first.pixel_values.shape[1:] == (3, 16, 16)
    answers = [a for b in batches for a in _answers(b, tok)]
    assert len(answers) == 24  # the last group is completed by the next epoch's first row
    assert sorted(answers[:23]) == sorted([f"Thing {i}." for i in range(14)] + [f"number {i}" for i in range(9)])
    stats = loader.stats()
    counts = {name: c["samples"] for name, c in stats["sources"].items()}
    # 24 rows taken, plus the one row read ahead to know the 24th is not an epoch's last
    assert sum(counts.values()) == 25 and counts["llava.json"] >= 14 and counts["alpaca.json"] >= 9
    assert 0 < stats["padding_fraction"] < 1 and stats["rows"] == 4 * len(batches)


def test_resume_mid_epoch_continues_with_exactly_the_same_batches(mixed, tok):
    cfg = config(mixed, micro=2)
    straight = _loader(cfg, tok, seed=5)
    run = iter(straight)
    reference = _take(run, 4)
    reference += list(run) + list(straight)[:3]
    first = _loader(cfg, tok, seed=5)
    it = iter(first)
    assert _same(_take(it, 4), reference[:4])
    state = json.loads(json.dumps(first.state_dict()))
    resumed = _loader(cfg, tok, seed=5)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert _same(rest + list(resumed)[:3], reference[4:])
    assert resumed.stats()["sources"]["llava.json"]["samples"] >= 14


def test_two_ranks_consume_what_one_does_and_resume_on_one_rank(mixed, tok):
    single = list(_loader(config(mixed, micro=2), tok))
    ranks = [_loader(config(mixed, micro=1), tok, rank=r, world=2) for r in range(2)]
    its = [iter(r) for r in ranks]
    steps = 5
    interleaved = [_take(its[r], 1)[0] for _ in range(steps) for r in range(2)]
    for a, b, want in zip(interleaved[::2], interleaved[1::2], single[:steps]):
        assert torch.equal(torch.cat([a.input_ids, b.input_ids]), want.input_ids)
        assert torch.equal(torch.cat([a.labels, b.labels]), want.labels)
    assert ranks[0].state_dict()["row"] == ranks[1].state_dict()["row"] == 2 * steps
    one = _loader(config(mixed, micro=2), tok)
    one.load_state_dict(ranks[1].state_dict())
    assert _same(list(one), single[steps:])


def test_worker_processes_give_the_same_batches_and_counts(mixed, tok):
    serial = _loader(config(mixed, micro=2), tok)
    parallel = _loader(config(mixed, micro=2, workers=2), tok)
    assert _same(list(parallel), list(serial))
    assert parallel.stats() == serial.stats()


def test_packed_rows_keep_samples_apart(mixed, tok):
    loader = _loader(config(mixed, micro=2, batching="packed", max_seq_len=96), tok)
    batches = list(loader)
    assert loader.rows_per_epoch < 23  # several samples share a row
    ids = torch.cat([b.sample_ids for b in batches])
    positions = torch.cat([b.positions for b in batches])
    assert int(ids.max()) >= 1 and bool((positions[ids == 1] >= 0).all())
    assert bool((positions[:, 1:][ids[:, 1:] != ids[:, :-1]] <= 0).all())  # positions restart per sample
    assert sum(int(b.num_samples) for b in batches) >= 23
    padded = _loader(config(mixed, micro=2, batching="padded", max_seq_len=96), tok)
    list(padded)
    assert loader.stats()["padding_fraction"] < padded.stats()["padding_fraction"]


def _stream_sources(tmp_path, shards=4, per_shard=5, **kw):
    write_shards(tmp_path / "shards", shards, per_shard, stats=True, **kw)
    return [SourceConfig(path=f"{tmp_path}/shards/{{00000..{shards - 1:05d}}}.tar")]


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_split_over_ranks_and_workers_without_repeats(tmp_path, tok, workers):
    cfg = config(_stream_sources(tmp_path), micro=2, template="caption", workers=workers, shuffle_buffer=4)
    seen = []
    for rank in range(2):
        loader = _loader(cfg, tok, rank=rank, world=2)
        assert loader.rows_per_epoch == 20  # img2dataset's stats files count the samples
        seen += [a for b in loader for a in _answers(b, tok)]
    assert sorted(seen) == sorted(f"caption {n}" for n in range(20))


def test_stream_resume_continues_with_exactly_the_samples_not_yet_trained_on(tmp_path, tok):
    cfg = config(_stream_sources(tmp_path), micro=2, template="caption", shuffle_buffer=6)
    reference = [k for b in _loader(cfg, tok) for k in b.keys]
    assert len(reference) == len(set(reference)) == 20
    first = _loader(cfg, tok)
    trained = [k for b in _take(iter(first), 3) for k in b.keys]
    resumed = _loader(cfg, tok)
    resumed.load_state_dict(first.state_dict())
    rest = [k for b in resumed for k in b.keys]
    assert sorted(trained + rest) == sorted(reference) and resumed.epoch == 1


def test_bad_records_are_counted_per_source_with_locations(tmp_path, tok, caplog):
    sources = _stream_sources(tmp_path, shards=2, per_shard=30, bad_image_keys=("000000003",),
                              no_caption_keys=("000000040",))
    cfg = config(sources, micro=2, template="caption", max_bad_fraction=0.1)
    loader = _loader(cfg, tok)
    with caplog.at_level("WARNING"):
        answers = [a for b in loader for a in _answers(b, tok)]
    assert len(answers) == 59 and "caption 40" not in answers
    counts = loader.stats()["sources"]["{00000..00001}.tar"]
    assert (counts["read"], counts["bad"], counts["samples"]) == (60, 2, 59)
    reports = " ".join(counts["reports"])
    assert "00001.tar:000000040: no caption" in reports and "00000.tar:000000003: cannot decode image" in reports
    assert "000000003" in caplog.text


def test_a_corrupt_image_blanks_only_its_sample_in_a_packed_row(tmp_path, tok):
    write_images(tmp_path, 2)
    (tmp_path / "1.png").write_bytes(b"broken")
    path = write_json(tmp_path / "l.json", llava_items(2, ["0.png", "1.png"]))
    loader = _loader(config([SourceConfig(path=str(path), image_root=str(tmp_path))], micro=1,
                            batching="packed", max_seq_len=128, max_bad_fraction=1.0), tok)
    (batch,) = list(loader)
    assert batch.pixel_values.shape[0] == 1 and int(batch.num_samples) == 1
    assert batch.keys == (f"{path}:0",)  # the blanked sample is not among what was trained on
    assert int((batch.input_ids == tok.image_token_id).sum()) == IMAGE_TOKENS
    assert loader.stats()["sources"]["l.json"]["bad"] == 1


def test_too_many_bad_records_abort_naming_the_worst_source(tmp_path, tok, mixed):
    lines = [json.dumps({"instruction": f"q{i}", "output": "a"}) if i % 3 else "{broken" for i in range(30)]
    (tmp_path / "junk.jsonl").write_text("\n".join(lines))
    sources = mixed + [SourceConfig(path=str(tmp_path / "junk.jsonl"))]
    with pytest.raises(DataError, match=r"source 'junk.jsonl': 10 of 30 records unreadable \(33.3%\); first: "
                                        r".*junk.jsonl:1: invalid JSON"):
        _loader(config(sources, max_bad_fraction=0.2), tok)
    assert _loader(config(sources, max_bad_fraction=0.4), tok).stats()["sources"]["junk.jsonl"]["bad"] == 10
    write_images(tmp_path / "few", 1)
    items = [{"image": "0.png" if i % 2 else "gone.png", "caption": "c"} for i in range(60)]
    path = write_json(tmp_path / "m.json", items)
    loader = _loader(config([SourceConfig(path=str(path), image_root=str(tmp_path / "few"))], template="caption",
                            max_bad_fraction=0.3), tok)
    with pytest.raises(DataError, match=r"'m.json': \d+ of \d+ records unreadable.*image file not found"):
        list(loader)
