"""Prompts for inference, rendered by the data layer exactly as training renders them.

Generation uses :func:`mmtune.data.encode.encode_prompt` (the conversation so far plus the assistant
header). A ``prefix`` the answer must start with is the caption templates' own ``Record.prefix``; for
the chat templates it is rendered as the beginning of the assistant answer (with the template's
spacing) and the answer's end of sequence is left off. Scoring encodes the full record with
:func:`mmtune.data.encode.encode_record`, so the scored tokens are the ones training supervises.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from mmtune.data.encode import EncodedSample, Skipped, TextTokenizer, encode_prompt, encode_record
from mmtune.data.records import Message, Record
from mmtune.data.templates import CaptionTemplate, get_template, template_names
from mmtune.errors import DataError

ImagePosition = Literal["after_bos", "placeholder"]
UNBOUNDED = 1 << 30


class PromptRenderer:
    """Token ids of prompts (and scored answers) for one tokenizer and image layout."""

    def __init__(self, tokenizer: TextTokenizer, num_image_tokens: int, image_position: ImagePosition):
        self.tokenizer = tokenizer
        self.num_image_tokens = num_image_tokens
        self.image_position = image_position

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

    def _answer_start(self, sample: EncodedSample) -> int:
        """Where the supervised run at the end of ``sample`` (the last answer and its EOS) begins."""
        unsupervised = (~sample.loss_mask).nonzero().flatten()
        return int(unsupervised[-1]) + 1 if len(unsupervised) else 0

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
        start = self._answer_start(sample)
        answer = ids[start:] if with_eos else ids[start:-1]
        return ids[:start], answer
