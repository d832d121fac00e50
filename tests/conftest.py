"""Shared fixtures: a real LLaMA-style tokenizer, tiny configs, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"
LLAMA_TOKENIZER_DIR = ASSETS / "llama-tokenizer"


@pytest.fixture(scope="session")
def llama_tokenizer_dir() -> Path:
    """A directory with a real LLaMA-style SentencePiece ``tokenizer.model`` (vocab 32000)."""
    return LLAMA_TOKENIZER_DIR


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield
