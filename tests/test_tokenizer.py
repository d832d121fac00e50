"""Tokenizer: parity with sentencepiece, <image> as one token, continuation segments, tokenizer.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sentencepiece

from mmtune.errors import CheckpointError, ConfigError
from mmtune.models.tokenizer import Tokenizer

SAMPLES = ["Hello world", "  two leading spaces", "A photo of a cat.\nUSER: what is it?",
           "héllo 你好 ☃", "tabs\tand  double  spaces", ""]


@pytest.fixture(scope="module")
def llama(llama_tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_path(llama_tokenizer_dir)


def test_ids_match_sentencepiece(llama: Tokenizer, llama_tokenizer_dir: Path) -> None:
    sp = sentencepiece.SentencePieceProcessor(model_file=str(llama_tokenizer_dir / "tokenizer.model"))
    for text in SAMPLES:
        assert llama.encode(text) == sp.encode(text), text
    assert (llama.bos_id, llama.eos_id) == (sp.bos_id(), sp.eos_id())
    assert llama.pad_id == sp.unk_id()  # no pad token in LLaMA's vocabulary: unk pads
    assert llama.decode(sp.encode(SAMPLES[2])) == SAMPLES[2]


def test_image_is_one_added_special_token(llama: Tokenizer) -> None:
    assert llama.image_token_id == 32000 and len(llama) == 32001 and llama.base_vocab_size == 32000
    ids = llama.encode("<image>\nDescribe the image.")
    assert ids[0] == llama.image_token_id and ids.count(llama.image_token_id) == 1
    assert llama.encode("a<image>b", continuation=True).count(llama.image_token_id) == 1
    assert llama.decode(ids) == "\nDescribe the image."
    assert "<image>" in llama.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("text", ["Hello world", "USER: hi there ASSISTANT: fine", "a photo of a dog"])
def test_continuation_segments_concatenate_like_the_whole(llama: Tokenizer, text: str) -> None:
    for cut in [i for i, ch in enumerate(text) if ch == " "]:
        pieces = llama.encode(text[:cut]) + llama.encode(text[cut:], continuation=True)
        assert pieces == llama.encode(text), (text[:cut], text[cut:])


def test_continuation_adds_no_dummy_space(llama: Tokenizer) -> None:
    assert llama.encode("Hello") == [22557]  # "▁Hello"
    assert llama.encode(" world", continuation=True) == [1526]  # "▁world"
    assert llama.encode("world", continuation=True) != llama.encode("world")
    assert llama.encode("\n", continuation=True) == [13]  # the newline byte alone, no "▁" before it


def test_bare_tokenizer_model_file_and_save_round_trip(llama_tokenizer_dir: Path, tmp_path: Path,
                                                       llama: Tokenizer) -> None:
    from_file = Tokenizer.from_path(llama_tokenizer_dir / "tokenizer.model")
    assert from_file.encode(SAMPLES[2]) == llama.encode(SAMPLES[2])
    llama.save(tmp_path / "saved")
    again = Tokenizer.from_path(tmp_path / "saved")
    assert len(again) == len(llama) and again.image_token_id == llama.image_token_id
    for text in SAMPLES:
        assert again.encode(text) == llama.encode(text)
        assert again.encode(text, continuation=True) == llama.encode(text, continuation=True)


def word_level_dir(directory: Path) -> Path:
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "<pad>", "a", "cat", "sits", "."])}
    backend = Backend(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    directory.mkdir()
    backend.save(str(directory / "tokenizer.json"))
    return directory


def test_plain_tokenizer_json_works(tmp_path: Path) -> None:
    tok = Tokenizer.from_path(word_level_dir(tmp_path / "wl"))
    assert (tok.bos_id, tok.eos_id, tok.image_token_id, len(tok)) == (1, 2, 8, 9)
    assert tok.encode("a cat <image> sits .") == [4, 5, 8, 6, 7]
    assert tok.encode("a cat", continuation=True) == [4, 5]
    assert tok.decode([4, 5, 8]) == "a cat"
    tok.check_fits(8)
    with pytest.raises(ConfigError, match="model.vocab_size"):
        tok.check_fits(7)


def test_declared_pad_inside_the_vocabulary_is_used(tmp_path: Path) -> None:
    directory = word_level_dir(tmp_path / "wl")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}))
    assert Tokenizer.from_path(directory).pad_id == 3


def test_bad_tokenizer_paths(tmp_path: Path, llama_tokenizer_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="no tokenizer.json or tokenizer.model"):
        Tokenizer.from_path(tmp_path)
    shutil.copy(llama_tokenizer_dir / "NOTICE.md", tmp_path / "notes.md")
    with pytest.raises(CheckpointError, match="expected a directory or a SentencePiece"):
        Tokenizer.from_path(tmp_path / "notes.md")
    from tokenizers import Tokenizer as Backend
    from tokenizers import models

    (tmp_path / "noeos").mkdir()
    Backend(models.WordLevel({"x": 0, "y": 1}, unk_token="x")).save(str(tmp_path / "noeos" / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="no end-of-sequence token"):
        Tokenizer.from_path(tmp_path / "noeos")
