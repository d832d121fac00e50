"""Turn-by-turn encoding: image placement, truncation and skipping, supervision, prompts."""

from __future__ import annotations

import pytest
import torch

from mmtune.data.encode import EncodedSample, RecordEncoder, Skipped, encode_prompt, encode_record, supervision_spans
from mmtune.data.records import Message, Record, caption_record, chat_record
from mmtune.data.templates import get_template
from mmtune.errors import ConfigError, DataError
from mmtune.models.tokenizer import Tokenizer

IMG = b"image bytes (never decoded here)"
N = 5


@pytest.fixture(scope="module")
def tok(llama_tokenizer_dir):
    return Tokenizer.from_path(llama_tokenizer_dir)


def _encode(tok, record, template="llava_v1", **kw) -> EncodedSample | Skipped:
    kw = {"num_image_tokens": N, "image_position": "placeholder", "max_seq_len": 512, **kw}
    return encode_record(record, tok, template, **kw)


def get_system() -> str:
    return get_template("llava_v1").default_system


def _image_positions(tok, sample: EncodedSample) -> list[int]:
    return (sample.input_ids == tok.image_token_id).nonzero().flatten().tolist()


def test_placeholder_goes_where_the_marker_is(tok):
    record = chat_record([("Look: <image> what is it?", "A cat.")], IMG)
    sample = _encode(tok, record)
    head = [tok.bos_id] + tok.encode(get_system() + " USER: Look: ")
    assert _image_positions(tok, sample) == list(range(len(head), len(head) + N))
    assert sample.input_ids[:len(head)].tolist() == head
    assert sample.image_spans == ((len(head), len(head) + N),)
    assert sample.n_images == 1 and sample.images == (IMG,) and sample.num_image_tokens == N


def test_placeholder_without_marker_starts_the_first_user_turn(tok):
    sample = _encode(tok, chat_record([("What is it?", "A cat."), ("Sure?", "Yes.")], IMG))
    head = [tok.bos_id] + tok.encode(get_system() + " USER: ")
    assert _image_positions(tok, sample) == list(range(len(head), len(head) + N))
    after = sample.input_ids[len(head) + N:].tolist()
    assert after[:len(tok.encode("What is it?"))] == tok.encode("What is it?")


def test_placeholder_for_captions_sits_before_the_prefix(tok):
    sample = _encode(tok, caption_record("sat on the mat.", IMG, prefix="The cat"), "caption")
    assert _image_positions(tok, sample) == list(range(1, 1 + N))
    assert sample.input_ids[1 + N:].tolist()[:2] == tok.encode("The cat")


def test_after_bos_puts_the_run_right_after_bos_and_removes_the_marker(tok):
    record = chat_record([("<image>\nWhat is it?", "A cat.")], IMG)
    sample = _encode(tok, record, image_position="after_bos")
    assert sample.input_ids[0].item() == tok.bos_id
    assert _image_positions(tok, sample) == list(range(1, 1 + N))
    text = tok.decode(sample.input_ids[1 + N:].tolist(), skip_special_tokens=False)
    assert text.startswith("A chat between") and "USER: What is it? ASSISTANT: A cat.</s>" in text
    assert "<image>" not in text and not sample.loss_mask[:1 + N].any()


def test_text_only_records_have_no_image_positions(tok):
    sample = _encode(tok, chat_record([("Hi", "Hello")]), image_position="after_bos")
    assert _image_positions(tok, sample) == [] and sample.n_images == 0 and sample.image_spans == ()


def test_truncation_cuts_text_keeps_image_positions_and_is_reported(tok):
    answer = " ".join(["word"] * 200)
    sample = _encode(tok, chat_record([("<image> Describe.", answer)], IMG), max_seq_len=64)
    full = _encode(tok, chat_record([("<image> Describe.", answer)], IMG))
    assert isinstance(sample, EncodedSample) and sample.truncated and not full.truncated
    assert len(sample) == 64
    assert torch.equal(sample.input_ids, full.input_ids[:64])
    assert torch.equal(sample.loss_mask, full.loss_mask[:64])
    assert len(_image_positions(tok, sample)) == N == sample.n_images * sample.num_image_tokens
    assert sample.input_ids[-1].item() != tok.eos_id


def test_truncation_never_cuts_into_image_positions(tok):
    record = chat_record([("A long question " * 20 + "<image>", "Yes.")], IMG)
    image_start = _encode(tok, record).image_spans[0][0]
    skipped = _encode(tok, record, max_seq_len=image_start + N - 1)
    assert isinstance(skipped, Skipped) and "image positions end beyond max_seq_len" in skipped.reason


def test_skip_mode_skips_overlong_samples(tok):
    record = chat_record([("Describe.", "word " * 100)], key="k1")
    result = _encode(tok, record, max_seq_len=32, overflow="skip")
    assert isinstance(result, Skipped) and result.key == "k1"
    assert result.reason.startswith(f"{len(_encode(tok, record))} tokens exceed max_seq_len 32")


def test_nothing_supervised_after_truncation_is_skipped(tok):
    record = chat_record([("question " * 100, "answer")])
    result = _encode(tok, record, max_seq_len=40)
    assert result == Skipped("no supervised tokens")


def test_image_for_a_text_only_model_is_skipped(tok):
    result = _encode(tok, chat_record([("What?", "That.")], IMG), num_image_tokens=0)
    assert isinstance(result, Skipped) and "no image tokens" in result.reason


@pytest.mark.parametrize("record, match", [
    (chat_record([("<image> and <image>", "two")], IMG), "2 <image> markers"),
    (chat_record([("<image> what?", "none")]), "marker but no image"),
])
def test_bad_image_markers_raise(tok, record, match):
    with pytest.raises(DataError, match=match):
        _encode(tok, record)


def test_bad_settings_raise_config_errors(tok):
    with pytest.raises(ConfigError, match="image_position"):
        _encode(tok, chat_record([("q", "a")]), image_position="prefix")
    with pytest.raises(ConfigError, match="data.overflow"):
        _encode(tok, chat_record([("q", "a")]), overflow="drop")


def test_every_answer_token_and_eos_supervised_nothing_else(tok):
    record = chat_record([("One?", "1"), ("Two?", "2"), ("Three?", "3")], IMG)
    sample = _encode(tok, record)
    supervised = sample.input_ids[sample.loss_mask].tolist()
    assert tok.decode(supervised, skip_special_tokens=False) == "1</s> 2</s> 3</s>"
    assert sample.num_supervised == len(supervised)
    labels = sample.labels()
    assert torch.equal(labels[sample.loss_mask], sample.input_ids[sample.loss_mask])
    assert (labels[~sample.loss_mask] == -100).all()


def test_record_template_overrides_the_default(tok):
    record = Record((Message("user", "q"), Message("assistant", "a")), template="none")
    assert _encode(tok, record, "alpaca").input_ids.tolist() == [tok.bos_id] + tok.encode("qa") + [tok.eos_id]


def test_encode_prompt_ends_with_the_assistant_header(tok):
    record = Record((Message("user", "<image>\nWhat is it?"),), image=IMG)
    prompt = encode_prompt(record, tok, "llava_v1", num_image_tokens=N, image_position="placeholder")
    text = tok.decode(prompt.input_ids.tolist(), skip_special_tokens=False)
    assert text.endswith("What is it? ASSISTANT:") and not prompt.loss_mask.any()
    assert len(_image_positions(tok, prompt)) == N


def test_record_encoder_binds_the_settings(tok):
    encoder = RecordEncoder(tok, "alpaca", num_image_tokens=N, image_position="after_bos", max_seq_len=128)
    record = chat_record([("q", "a")], IMG)
    expected = _encode(tok, record, "alpaca", image_position="after_bos", max_seq_len=128)
    assert torch.equal(encoder(record).input_ids, expected.input_ids)
    assert encoder.prompt(Record((Message("user", "q"),), image=IMG)).input_ids.tolist() \
        == expected.input_ids.tolist()[:-(len(tok.encode("a", continuation=True)) + 1)]


class _NoBosTokenizer:
    """A word-level stand-in without BOS (like some byte-level BPE tokenizers)."""

    bos_id = None
    eos_id = 0
    image_token_id = 1
    vocab = {"q": 2, "a": 3, "USER:": 4, "ASSISTANT:": 5}

    def encode(self, text: str, continuation: bool = False) -> list[int]:
        return [self.vocab[w] for w in text.split()]


def test_tokenizer_without_bos_gets_no_bos():
    sample = encode_record(chat_record([("q", "a")]), _NoBosTokenizer(), "llava_v1", num_image_tokens=2,
                           max_seq_len=16, system_prompt="")
    assert sample.input_ids.tolist() == [4, 2, 5, 3, 0]
    assert sample.loss_mask.tolist() == [False, False, False, True, True]


def test_supervision_spans_read_the_mask_back_as_text(tok):
    sample = _encode(tok, chat_record([("Hi?", "Yo."), ("Bye?", "Ciao.")]), system_prompt="S.")
    spans = supervision_spans(sample, lambda ids: tok.decode(ids, skip_special_tokens=False))
    assert spans == [("<s> S. USER: Hi? ASSISTANT:", False), ("Yo.</s>", True),
                     ("USER: Bye? ASSISTANT:", False), ("Ciao.</s>", True)]
