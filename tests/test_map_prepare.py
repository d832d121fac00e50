"""Map mode prepares each sample once: the packing plan comes from a lengths pass (every entry encoded once,
cached on disk and not repeated on a second start), and across 2 ranks x 2 loader workers every sample of
the epoch is read and tokenised by exactly one worker; the plan gives the same rows as 1 rank."""

from __future__ import annotations

import collections
import os

import pytest

from data_factory import alpaca_items, caption_loader, config, llava_items, write_images, write_json
from mmtune.config import SourceConfig
from mmtune.data.encode import RecordEncoder
from mmtune.models.tokenizer import Tokenizer


@pytest.fixture
def calls(tmp_path, monkeypatch):
    """Every encoder call, as (process id, identity), from this process and its forked loader workers."""
    log = tmp_path / "calls.txt"
    original = RecordEncoder.__call__

    def counted(self, record):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {record.extra.get('identity', record.key)}\n")
        return original(self, record)

    monkeypatch.setattr(RecordEncoder, "__call__", counted)

    def read() -> list[tuple[int, str]]:
        lines = log.read_text().splitlines() if log.is_file() else []
        return [(int(pid), identity) for pid, identity in (line.split(" ", 1) for line in lines)]

    return read


def test_each_sample_is_tokenised_once_across_2_ranks_x_2_workers(tmp_path, calls, llama_tokenizer_dir):
    names = write_images(tmp_path / "imgs", 3)
    llava = write_json(tmp_path / "llava.json", llava_items(10, names))
    alpaca = write_json(tmp_path / "alpaca.json", alpaca_items(6))
    sources = [SourceConfig(path=str(llava), image_root=str(tmp_path / "imgs")),
               SourceConfig(path=str(alpaca), template="alpaca")]
    cfg = config(sources, workers=2, cache_dir=str(tmp_path / "cache"))  # padded: 16 rows, groups of 2 x 2
    tok = Tokenizer.from_path(llama_tokenizer_dir)
    main = os.getpid()
    loaders = [caption_loader(cfg, tok, rank=r, world=2) for r in range(2)]
    identities = {f"{llava}:{i}" for i in range(10)} | {f"{alpaca}:{i}" for i in range(6)}
    lengths_pass = collections.Counter(identity for pid, identity in calls() if pid == main)
    assert lengths_pass == {identity: 1 for identity in identities}  # the cached lengths pass: once in all
    assert loaders[0].rows_per_epoch == 16 and len(calls()) == 16  # counted from the plan, nothing encoded

    batches = [list(loader) for loader in loaders]
    workers = [(pid, identity) for pid, identity in calls() if pid != main]
    assert collections.Counter(identity for _, identity in workers) == {identity: 1 for identity in identities}
    assert len({pid for pid, _ in workers}) == 4  # each rank's 2 workers took their share
    assert sum(b.num_samples for rank in batches for b in rank) == 16

    before = len(calls())
    again = caption_loader(cfg, tok, rank=0, world=2)
    assert again._plan.lengths.computed == 0 and len(calls()) == before  # a second start reads the cache

    one = caption_loader(config(sources, workers=0, cache_dir=str(tmp_path / "cache"), micro=4), tok)
    rows = [k for b in one for k in b.keys]
    two = [k for step in zip(*batches) for b in step for k in b.keys]
    assert rows == two  # 2 ranks consume the global row sequence of 1 rank


def test_the_lengths_cache_follows_the_data_the_settings_and_the_epoch_of_caption_lists(tmp_path, llama_tokenizer_dir):
    from mmtune.data.lengths import LengthStore
    from mmtune.data.mixture import open_sources
    from mmtune.data.processor import Processor

    alpaca = write_json(tmp_path / "alpaca.json", alpaca_items(6))
    captions = tmp_path / "captions.jsonl"
    captions.write_text("".join(f'{{"image": "data:image/png;base64,iVBORw0KGgo=", "caption": ["a {i}", "b"]}}\n'
                                for i in range(3)))
    cfg = config([SourceConfig(path=str(alpaca), template="alpaca"), SourceConfig(path=str(captions))],
                 cache_dir=str(tmp_path / "cache"))
    processor = Processor(Tokenizer.from_path(llama_tokenizer_dir), 4, "placeholder", None)

    def store(cfg=cfg) -> LengthStore:
        return LengthStore(open_sources(cfg.data), processor.encoder(cfg.data), 0, cfg.data.cache_dir)

    first = store()
    first.get(0, 0), first.get(0, 1), first.get(1, 0), first.get(1, 1)
    assert first.computed == 3  # alpaca once for every epoch; the caption lists once per epoch
    again = store()
    again.get(0, 5), again.get(1, 1)
    assert again.computed == 0
    write_json(alpaca, alpaca_items(7))  # other data
    changed = store()
    changed.get(0, 0)
    assert changed.computed == 1 and len(changed.get(0, 0).lengths) == 7
    cfg.data.max_seq_len = 32  # other settings
    shorter = store(cfg)
    shorter.get(0, 0)
    assert shorter.computed == 1


def test_balanced_steps_give_each_step_the_rows_of_one_rank_with_less_spread(tmp_path, llama_tokenizer_dir):
    items = [{"instruction": f"Say {i}", "input": "", "output": " ".join(["word"] * (1 + (i * 7) % 23))}
             for i in range(24)]
    alpaca = write_json(tmp_path / "alpaca.json", items)
    tok = Tokenizer.from_path(llama_tokenizer_dir)

    def steps(world: int, balance: bool) -> list[list[list]]:
        cfg = config([SourceConfig(path=str(alpaca), template="alpaca")], micro=4 // world, max_seq_len=48,
                     cache_dir=str(tmp_path / "cache"), balance=balance, image_cost=5)
        ranks = [list(caption_loader(cfg, tok, rank=r, world=world)) for r in range(world)]
        return [[b for b in step] for step in zip(*ranks)]

    one, plain, balanced = steps(1, False), steps(2, False), steps(2, True)
    assert len(one) == len(balanced) == 6
    for a, b in zip(one, balanced):
        assert sorted(a[0].keys) == sorted(b[0].keys + b[1].keys)  # the same rows every step
    assert [s[0].keys for s in steps(2, True)] == [s[0].keys for s in balanced]  # deterministic

    def spread(step) -> float:
        tokens = [b.num_tokens for b in step]
        return max(tokens) * len(tokens) / sum(tokens)

    assert sum(map(spread, balanced)) < sum(map(spread, plain))
    assert all(spread(b) <= spread(p) for b, p in zip(balanced, plain))

    cfg = config([SourceConfig(path=str(alpaca), template="alpaca")], micro=2, max_seq_len=48,
                 cache_dir=str(tmp_path / "cache"), balance=True, image_cost=5)
    first = caption_loader(cfg, tok, rank=1, world=2)
    batches = iter(first)
    taken = [next(batches) for _ in range(2)]
    resumed = caption_loader(cfg, tok, rank=1, world=2)
    resumed.load_state_dict(first.state_dict())
    assert [b.keys for b in resumed] == [s[1].keys for s in balanced[2:]]  # resume exact
    assert [t.keys for t in taken] == [s[1].keys for s in balanced[:2]]


def test_rank_rows_deals_by_cost_to_the_least_loaded_rank_with_room():
    from types import SimpleNamespace

    import numpy as np

    from mmtune.data.lengths import Lengths
    from mmtune.data.mapped import rank_rows

    lengths = Lengths(np.array([10, 40, 30, 20]), np.zeros(4, bool), np.array([0, 0, 1, 0]))
    store = SimpleNamespace(get=lambda s, e: lengths)
    group = [(0, [(0, 0)]), (0, [(0, 1)]), (0, [(0, 2)]), (0, [(0, 3)])]
    plan = SimpleNamespace(micro=2, world=2, balance=15, lengths=store)
    # costs 10, 40, 45 (30 + an image of 15), 20: 45 -> rank 0, 40 -> rank 1, 20 -> rank 1, 10 -> rank 0
    assert rank_rows(plan, group) == [[group[0], group[2]], [group[1], group[3]]]
    plan.balance = None
    assert rank_rows(plan, group) == [group[:2], group[2:]]
