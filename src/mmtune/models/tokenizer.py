"""The tokenizer: a transformers fast tokenizer with ``<image>`` added as a special token.

:meth:`Tokenizer.from_path` takes a directory holding ``tokenizer.json`` and/or a SentencePiece
``tokenizer.model`` (loaded with ``AutoTokenizer.from_pretrained``, which converts it exactly; never
``LlamaTokenizer(vocab_file=...)``, which silently builds an empty vocabulary), or a bare
``tokenizer.model`` file.

Leading spaces (SentencePiece's "▁"): LLaMA-style tokenizers add a dummy space before the text they
encode, so ``encode("Hello")`` is ``["▁Hello"]`` exactly as ``sentencepiece`` encodes it, and the same
happens to the text right after an added special token such as ``<image>`` (sentencepiece would see each
chunk separately too). When a sequence is tokenised piece by piece (turn by turn), only the first
segment should get that dummy space: encode later segments with ``encode(text, continuation=True)``,
which adds nothing, so ``encode("Hello") + encode(" world", continuation=True)`` equals
``encode("Hello world")`` (unless a merge crosses the boundary, which never happens at a space for
SentencePiece vocabularies). Tokenizers without a dummy prefix (byte-level BPE, WordLevel) encode the
same way in both modes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from mmtune.errors import CheckpointError, ConfigError

IMAGE_TOKEN = "<image>"
# Conventional names used when a bare tokenizer.json declares no special tokens.
_FALLBACK_NAMES = {
    "bos": ("<s>", "<|begin_of_text|>", "<|startoftext|>"),
    "eos": ("</s>", "<|end_of_text|>", "<|endoftext|>", "<|eot_id|>"),
    "unk": ("<unk>",),
}


def _without_dummy_prefix(tokenizer_json: str) -> str:
    """The same tokenizer JSON with SentencePiece's dummy leading space switched off.

    Drops the normalizer steps that prepend "▁" (``Prepend`` and the ``\\A▁`` doubling) and sets every
    ``Metaspace`` pre-tokenizer to ``prepend_scheme: never``.
    """
    spec = json.loads(tokenizer_json)

    def prepends(step: dict) -> bool:
        pattern = step.get("pattern", {})
        return step.get("type") == "Prepend" or (
            step.get("type") == "Replace" and pattern.get("Regex", "").startswith("\\A"))

    def strip(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if node.get("type") == "Sequence" and "normalizers" in node:
            node["normalizers"] = [strip(n) for n in node["normalizers"] if not prepends(n)]
        if node.get("type") == "Sequence" and "pretokenizers" in node:
            node["pretokenizers"] = [strip(n) for n in node["pretokenizers"]]
        if node.get("type") == "Metaspace":
            node["prepend_scheme"] = "never"
            node.pop("add_prefix_space", None)
        return None if prepends(node) else node

    spec["normalizer"] = strip(spec.get("normalizer"))
    spec["pre_tokenizer"] = strip(spec.get("pre_tokenizer"))
    return json.dumps(spec)


class Tokenizer:
    """A fast transformers tokenizer plus the ids mmtune needs (see ``docs/architecture.md``)."""

    def __init__(self, hf_tokenizer: Any):
        from tokenizers import Tokenizer as Backend

        if not getattr(hf_tokenizer, "is_fast", False):
            raise CheckpointError(f"{type(hf_tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer")
        self.hf = hf_tokenizer
        self.base_vocab_size = int(hf_tokenizer.vocab_size)
        if hf_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) in (None, hf_tokenizer.unk_token_id):
            hf_tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        self.image_token_id: int = hf_tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        backend = hf_tokenizer.backend_tokenizer
        self._start = backend
        self._continuation = Backend.from_str(_without_dummy_prefix(backend.to_str()))
        self.bos_id: Optional[int] = self._special_id("bos")
        self.eos_id: int = self._required_eos()
        self.unk_id: Optional[int] = self._special_id("unk")
        self.pad_id: int = self._pick_pad()

    @classmethod
    def from_path(cls, path: str | Path) -> "Tokenizer":
        """Loads ``tokenizer.json`` / ``tokenizer.model`` from a directory, or a ``tokenizer.model`` file."""
        from transformers import AutoTokenizer

        path = Path(path)
        if path.is_file():
            if path.suffix != ".model":
                raise CheckpointError(f"{path}: expected a directory or a SentencePiece tokenizer.model file")
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy(path, Path(tmp) / "tokenizer.model")
                return cls.from_path(tmp)
        if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
            raise CheckpointError(f"{path}: no tokenizer.json or tokenizer.model found")
        try:
            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: cannot load the tokenizer ({exc})") from None
        return cls(hf)

    def _special_id(self, kind: str) -> Optional[int]:
        """The id of the declared ``kind`` token, else of a conventional name present in the vocabulary."""
        declared = getattr(self.hf, f"{kind}_token_id", None)
        if declared is not None:
            return int(declared)
        vocab = self.hf.get_vocab()
        for name in _FALLBACK_NAMES[kind]:
            if name in vocab:
                return int(vocab[name])
        return None

    def _required_eos(self) -> int:
        eos = self._special_id("eos")
        if eos is None:
            raise CheckpointError("the tokenizer declares no end-of-sequence token (eos_token)")
        return eos

    def _pick_pad(self) -> int:
        """The tokenizer's pad token when it lies in the base vocabulary, else unk, else eos."""
        pad = getattr(self.hf, "pad_token_id", None)
        if pad is not None and pad < self.base_vocab_size:
            return int(pad)
        return self.unk_id if self.unk_id is not None else self.eos_id

    def __len__(self) -> int:
        return len(self.hf)

    def fingerprint(self) -> str:
        """A hash of the whole tokenizer (vocabulary, merges, normalisation, special tokens): equal
        fingerprints encode every text alike (the data layer keys cached lengths by it)."""
        import hashlib

        return hashlib.sha256(self._start.to_str().encode()).hexdigest()

    def encode(self, text: str, continuation: bool = False) -> list[int]:
        """Token ids of ``text`` without BOS/EOS; ``<image>`` (and other special tokens) stay one id.

        ``continuation=True`` encodes ``text`` as if it directly followed earlier text: no dummy leading
        space is added (see the module docstring).
        """
        backend = self._continuation if continuation else self._start
        return backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens (BOS, EOS, ``<image>``) are dropped unless asked for."""
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def check_fits(self, vocab_size: int) -> None:
        """Raises :class:`ConfigError` unless every id but ``<image>`` is below the decoder's ``vocab_size``."""
        largest = max(i for i in self.hf.get_vocab().values() if i != self.image_token_id)
        if largest >= vocab_size:
            raise ConfigError("model.vocab_size", vocab_size,
                              f"at least {largest + 1} (the tokenizer's size without <image>)")

    def save(self, directory: str | Path) -> None:
        """Writes the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``) into ``directory``."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(directory))
