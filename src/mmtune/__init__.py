"""mmtune: two-stage, full-parameter multimodal fine-tuning of LLaMA-family models.

``mmtune.load_model(dir)`` and ``mmtune.save_model(model, dir)`` read and write the saved-model
directory every ``--model DIR`` option takes. They are imported lazily so that ``import mmtune``
(and the CLI's start-up) does not pay for torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_model", "save_model", "load_tokenizer", "__version__"]


def __getattr__(name: str):
    if name in ("load_model", "save_model", "load_tokenizer"):
        from mmtune.models import io

        return getattr(io, name)
    raise AttributeError(f"module 'mmtune' has no attribute {name!r}")
