"""The processor: everything that turns text and images into model inputs for one model.

It plays the role ``LlavaProcessor`` plays in transformers: the tokenizer, the prompt templates, the
image transform, where an image's tokens go (``ConnectorConfig.image_position``) and how many there are
(``image_tokens_per_image``, read from the config sections without building the model). Training
(:meth:`Processor.encoder`), the data commands, the benchmarks, the inference engine and evaluation all
take one, so a prompt is rendered, tokenised and placed the same way everywhere.

Inference rendering (:meth:`Processor.generation_prompt`, :meth:`Processor.prompt_and_answer`) goes
through the same turn-by-turn encoder as training. A ``prefix`` the answer must start with is the
caption templates' own ``Record.prefix``; for the chat templates it is rendered as the beginning of the
assistant answer (with the template's spacing) and the answer's end of sequence is left off. Scoring
encodes the full record, so the scored tokens are the ones training supervises.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from mmtune.config import ImagePosition
from mmtune.data.encode import EncodedSample, RecordEncoder, Skipped, encode_prompt, encode_record
from mmtune.data.images import ImageTransform
from mmtune.data.records import Message, Record
from mmtune.data.templates import CaptionTemplate, get_template, template_names
from mmtune.errors import ConfigError, DataError
from mmtune.models.tokenizer import Tokenizer

if TYPE_CHECKING:
    from mmtune.config import Config, ConnectorConfig, DataConfig, VisionConfig

UNBOUNDED = 1 << 30


@dataclass(frozen=True)
class Processor:
    """Tokenizer, templates, image transform and image layout of one model."""

    tokenizer: Tokenizer
    num_image_tokens: int
    """Placeholder positions per image (0 for a text-only model)."""
    image_position: ImagePosition
    image_transform: Optional[ImageTransform]
    """Image -> pixel values, None for a text-only model."""

    # ------------------------------------------------------------------ building

    @classmethod
    def from_sections(cls, tokenizer: Tokenizer, vision: "VisionConfig", connector: "ConnectorConfig") -> "Processor":
        """The processor of a model with these ``vision`` and ``connector`` sections."""
        from mmtune.models.vlm import image_tokens_per_image

        tokens = image_tokens_per_image(vision, connector)
        transform = ImageTransform.from_vision(vision) if tokens else None
        return cls(tokenizer, tokens, connector.image_position, transform)

    @classmethod
    def from_config(cls, cfg: "Config") -> "Processor":
        """The processor of a run: ``tokenizer.path`` (checked to fit ``model.vocab_size``), ``vision``
        and ``connector``."""
        if not cfg.tokenizer.path:
            raise ConfigError("tokenizer.path", None, "a tokenizer directory or tokenizer.model file")
        tokenizer = Tokenizer.from_path(cfg.tokenizer.path)
        tokenizer.check_fits(cfg.model.vocab_size)
        return cls.from_sections(tokenizer, cfg.vision, cfg.connector)

    @classmethod
    def from_saved_model(cls, directory: str | Path) -> "Processor":
        """The processor of a saved-model directory, from its ``config.json`` and tokenizer files (no
        weights are read)."""
        from mmtune.models.io import read_sections

        _, vision, connector, _ = read_sections(directory)
        return cls.from_sections(Tokenizer.from_path(directory), vision, connector)

    def with_max_image_pixels(self, max_pixels: Optional[int]) -> "Processor":
        """The same processor refusing images of more than ``max_pixels`` pixels (None: unchanged)."""
        if max_pixels is None or self.image_transform is None:
            return self
        return replace(self, image_transform=replace(self.image_transform, max_pixels=max_pixels))

    # ------------------------------------------------------------------ training

    def encoder(self, data: "DataConfig") -> RecordEncoder:
        """The training record encoder ``data`` asks for (template, system prompt, max_seq_len, overflow)."""
        return RecordEncoder(self.tokenizer, data.template, self.num_image_tokens, self.image_position,
                             data.max_seq_len, data.overflow, data.system_prompt)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ inference

    @staticmethod
    def templates() -> list[str]:
        """The template names a request may ask for."""
        return template_names()

    def _encode(self, record: Record, template: str) -> EncodedSample:
        result = encode_record(record, self.tokenizer, template, num_image_tokens=self.num_image_tokens,
                               image_position=self.image_position, max_seq_len=UNBOUNDED)
        if isinstance(result, Skipped):
            raise DataError(f"cannot render the request with template {template!r}: {result.reason}")
        return result

    @staticmethod
    def _with_user_turn(record: Record, template: str) -> Record:
        """A chat template needs a user turn: an empty prompt becomes an empty instruction."""
        tmpl = get_template(template)
        if isinstance(tmpl, CaptionTemplate) or tmpl.allow_leading_assistant \
                or any(m.role == "user" for m in record.messages):
            return record
        at = int(bool(record.messages) and record.messages[0].role == "system")
        messages = (*record.messages[:at], Message("user", ""), *record.messages[at:])
        return replace(record, messages=messages)

    def generation_prompt(self, record: Record, template: str) -> list[int]:
        """Ids of the prompt that the answer continues; ``record`` ends with a user turn (or none)."""
        record = self._with_user_turn(record, template)
        if not record.prefix or isinstance(get_template(template), CaptionTemplate):
            sample = encode_prompt(record, self.tokenizer, template, num_image_tokens=self.num_image_tokens,
                                   image_position=self.image_position)
            return sample.input_ids.tolist()
        prefix = record.prefix
        opened = replace(record, prefix=None, messages=(*record.messages, Message("assistant", prefix)))
        ids = self._encode(opened, template).input_ids.tolist()
        assert ids[-1] == self.tokenizer.eos_id, "an answer ends with EOS"
        ids = ids[:-1]
        while ids and not prefix[-1].isspace() and not self.tokenizer.decode(ids[-1:]).strip():
            ids.pop()  # a template's trailing separator after the answer (llama2_chat's " {a} ")
        return ids

    def prompt_and_answer(self, record: Record, template: str, with_eos: bool = False
                          ) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) of a record whose last message is the answer to score."""
        sample = self._encode(self._with_user_turn(record, template), template)
        ids = sample.input_ids.tolist()
        unsupervised = (~sample.loss_mask).nonzero().flatten()
        start = int(unsupervised[-1]) + 1 if len(unsupervised) else 0
        answer = ids[start:] if with_eos else ids[start:-1]
        return ids[:start], answer
