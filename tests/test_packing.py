"""Packing, grouping, padding and collate: exact row layout, sample boundaries, counts, images."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from mmtune.data.encode import EncodedSample, encode_record
from mmtune.data.images import ImageTransform
from mmtune.data.packing import Packer, build_row, collate
from mmtune.data.records import caption_record, chat_record
from mmtune.errors import ConfigError, DataError
from mmtune.models.tokenizer import Tokenizer

PAD, IMAGE_ID = 0, 99


def _sample(ids: list[int], supervised_from: int, key: str = "", images: tuple = ()) -> EncodedSample:
    mask = [i >= supervised_from for i in range(len(ids))]
    n = sum(i == IMAGE_ID for i in ids) // max(len(images), 1)
    return EncodedSample(torch.tensor(ids), torch.tensor(mask), images, n, key=key)


def test_build_row_shifts_labels_and_restarts_positions():
    a = _sample([1, 10, 11, 12, 2], supervised_from=3)  # targets: 12, EOS
    b = _sample([1, 20, 21, 2], supervised_from=2)  # targets: 21, EOS
    row = build_row([a, b], PAD, length=12)
    assert row.input_ids.tolist() == [1, 10, 11, 12, 2, 1, 20, 21, 2, PAD, PAD, PAD]
    assert row.labels.tolist() == [-100, -100, 12, 2, -100, -100, 21, 2, -100, -100, -100, -100]
    assert row.positions.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 0, 0]
    assert row.sample_ids.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, -1, -1, -1]
    assert (row.num_padding, row.num_tokens, row.num_supervised, row.num_samples) == (3, 9, 4, 2)


def test_last_token_of_a_sample_never_predicts_the_next_sample():
    a = _sample([1, 5, 6], supervised_from=1)  # a truncated sample: its last token is supervised
    b = _sample([1, 7, 2], supervised_from=1)
    row = build_row([a, b], PAD)
    assert row.labels.tolist() == [5, 6, -100, 7, 2, -100]


def test_packed_rows_have_exactly_max_seq_len_tokens_and_keep_every_sample():
    lengths = [5, 3, 7, 2, 6, 4, 8, 1 + 1, 3, 5]
    samples = [_sample([1] + [100 + i] * (n - 2) + [2], 1, key=str(i)) for i, n in enumerate(lengths)]
    packer = Packer(10, PAD, "packed", open_rows=2)
    rows = list(packer.pack(samples))
    assert all(len(r) == 10 for r in rows)
    assert sum(r.num_samples for r in rows) == len(samples)
    assert sum(r.num_tokens for r in rows) == sum(lengths) == packer.stats.tokens
    assert packer.stats.rows == len(rows) and packer.stats.samples == len(samples)
    assert packer.stats.padding == 10 * len(rows) - sum(lengths)
    assert packer.stats.padding_fraction == pytest.approx(packer.stats.padding / (10 * len(rows)))
    for row in rows:
        ids = row.sample_ids[row.sample_ids >= 0]
        assert ids.tolist() == sorted(ids.tolist()) and ids.unique().tolist() == list(range(row.num_samples))
        starts = (row.positions == 0) & (row.sample_ids >= 0)
        assert int(starts.sum()) == row.num_samples


def test_packing_is_best_fit_and_deterministic():
    samples = [_sample([1] * n, 0) for n in (6, 6, 4, 4)]
    rows = list(Packer(10, PAD, "packed", open_rows=2).pack(samples))
    assert [r.sample_ids.tolist().count(-1) for r in rows] == [0, 0]
    again = list(Packer(10, PAD, "packed", open_rows=2).pack(samples))
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(rows, again))


def test_a_full_row_is_released_at_once():
    packer = Packer(4, PAD, "packed")
    assert packer.push(_sample([1, 2], 0)) == []
    rows = packer.push(_sample([3, 4], 0))
    assert len(rows) == 1 and rows[0].input_ids.tolist() == [1, 2, 3, 4] and packer.flush() == []


def test_padded_rows_hold_one_sample_each():
    samples = [_sample([1, 5, 2], 1), _sample([1, 6, 7, 8, 2], 1)]
    rows = list(Packer(8, PAD, "padded").pack(samples))
    assert [len(r) for r in rows] == [8, 8] and [r.num_samples for r in rows] == [1, 1]
    unpadded = list(Packer(8, PAD, "padded", pad_to_max=False).pack(samples))
    batch = collate(unpadded)
    assert batch.input_ids.shape == (2, 5)
    assert batch.input_ids[0].tolist() == [1, 5, 2, PAD, PAD]
    assert batch.sample_ids[0].tolist() == [0, 0, 0, -1, -1]


def test_grouped_rows_come_sorted_by_length_and_batches_pad_to_their_longest():
    lengths = [3, 9, 4, 8, 2, 7]
    samples = [_sample([1] * n, 1) for n in lengths]
    packer = Packer(16, PAD, "grouped", group_size=3)
    rows = list(packer.pack(samples))
    assert [len(r) for r in rows] == [9, 4, 3, 8, 7, 2]
    batch = collate(rows[3:5])
    assert batch.input_ids.shape == (2, 8) and int(batch.num_padding) == 1
    assert packer.stats.padding == 0 and packer.stats.tokens == sum(lengths)


def test_too_long_samples_and_bad_modes_are_refused():
    with pytest.raises(DataError, match="more than max_seq_len 4"):
        Packer(4, PAD).push(_sample([1] * 5, 0))
    with pytest.raises(ConfigError, match="data.batching"):
        Packer(4, PAD, "bucketed")  # type: ignore[arg-type]


def test_state_dict_resumes_the_same_rows():
    samples = [_sample([1] * n, 0, key=str(n)) for n in (3, 5, 4, 2, 6, 3)]
    whole = list(Packer(10, PAD).pack(samples))
    first = Packer(10, PAD)
    rows = [r for s in samples[:3] for r in first.push(s)]
    second = Packer(10, PAD)
    second.load_state_dict(first.state_dict())
    rows += list(second.pack(samples[3:]))
    assert [r.input_ids.tolist() for r in rows] == [r.input_ids.tolist() for r in whole]
    assert second.stats.samples == len(samples)


@pytest.fixture(scope="module")
def tok(llama_tokenizer_dir):
    return Tokenizer.from_path(llama_tokenizer_dir)


def _png(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (12, 8), colour)


@pytest.mark.parametrize("position", ["after_bos", "placeholder"])
def test_collate_batch_contract_with_real_samples(tok, position):
    n = 6
    records = [caption_record("A red square.", _png((255, 0, 0))), chat_record([("Hi", "Hello there.")]),
               chat_record([("<image> Colour?", "Green.")], _png((0, 255, 0))),
               caption_record("A blue square.", _png((0, 0, 255)), prefix="A")]
    templates = ["caption", "llava_v1", "llava_v1", "caption"]
    samples = [encode_record(r, tok, t, num_image_tokens=n, image_position=position, max_seq_len=96)
               for r, t in zip(records, templates)]
    rows = list(Packer(96, tok.pad_id, "packed", open_rows=1).pack(samples))
    transform = ImageTransform(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "resize")
    batch = collate(rows, transform)
    b, t = batch.input_ids.shape
    assert t == 96 and all(getattr(batch, k).shape == (b, t) and getattr(batch, k).dtype == torch.long
                           for k in ("labels", "positions", "sample_ids"))
    assert batch.pixel_values.shape == (3, 3, 8, 8)
    assert batch.pixel_values[:, :, 0, 0].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert int((batch.input_ids == tok.image_token_id).sum()) == batch.pixel_values.shape[0] * n
    assert not (batch.labels == tok.image_token_id).any()
    assert int(batch.num_samples) == 4
    assert int(batch.num_supervised) == sum(s.num_supervised for s in samples)
    assert int(batch.num_tokens) == sum(len(s) for s in samples)
    assert int(batch.num_padding) == b * t - int(batch.num_tokens)
    assert (batch.input_ids[batch.sample_ids < 0] == tok.pad_id).all()


def test_collate_without_images_has_no_pixel_values_and_needs_a_transform_for_images(tok):
    text_only = build_row([_sample([1, 5, 2], 1)], PAD)
    assert collate([text_only]).pixel_values is None
    with_image = build_row([_sample([1, IMAGE_ID, 2], 2, images=(b"x",))], PAD)
    with pytest.raises(DataError, match="1 undecoded images but no image transform"):
        collate([with_image])
    decoded = dataclasses.replace(with_image, images=(torch.ones(3, 4, 4),))
    assert torch.equal(collate([decoded]).pixel_values, torch.ones(1, 3, 4, 4))
