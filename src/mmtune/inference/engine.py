"""The inference engine: a saved model and its :class:`~mmtune.data.processor.Processor`.

:meth:`Engine.prepare` turns a :class:`~mmtune.inference.request.ChatRequest` into prompt token ids
(rendered by the processor, exactly as training renders them), pixel values and sampling parameters;
:meth:`Engine.run` generates with :func:`mmtune.models.generate.generate` and streams text through
``on_text``; :meth:`Engine.run_batch` answers several prepared requests in one left-padded batch (``mmtune
generate --batch`` and evaluation). :meth:`Engine.score` gives per-token log-probabilities of an answer.
User mistakes (unknown template, unreadable image, prompt too long) raise
:class:`~mmtune.errors.MMTuneError` subclasses from ``prepare``, before any model work.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from mmtune.data.processor import Processor
from mmtune.data.records import Message, Record
from mmtune.errors import CheckpointError, ConfigError, DataError
from mmtune.inference.request import ChatRequest, Completion
from mmtune.inference.textstream import TextStream
from mmtune.models.generate import SamplingParams, generate

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A request made ready for the model: what rank 0 broadcasts under tensor parallelism."""

    prompt_ids: list[int]
    pixel_values: Optional[torch.Tensor]
    params: SamplingParams
    keep_leading_space: bool = False


@dataclass
class Score:
    """Log-probabilities of an answer's tokens given the prompt (and image)."""

    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]

    def as_dict(self, tokens: list[str]) -> dict:
        """The JSON form printed by ``mmtune score --json``."""
        return {"prompt_tokens": len(self.prompt_ids), "token_ids": self.token_ids, "tokens": tokens,
                "logprobs": self.logprobs, "total_logprob": sum(self.logprobs)}


class Engine:
    """Everything needed to answer requests with one model on one device."""

    def __init__(self, model: torch.nn.Module, processor: Processor, default_template: str = "alpaca"):
        if default_template not in processor.templates():
            raise ConfigError("template", default_template, "one of " + ", ".join(processor.templates()))
        if processor.num_image_tokens != model.num_image_tokens:
            raise CheckpointError(f"the processor places {processor.num_image_tokens} tokens per image, the model "
                                  f"takes {model.num_image_tokens}")
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.default_template = default_template
        self.max_seq_len = int(model.llm.cfg.max_seq_len)
        weight = model.llm.tok_embeddings.weight
        self.device, self.dtype = weight.device, weight.dtype

    @classmethod
    def from_dir(cls, model_dir: str | Path, *, device: str = "cpu", dtype: Optional[torch.dtype] = None,
                 template: str = "alpaca", max_image_pixels: Optional[int] = None,
                 prepare: Optional[Callable[[torch.nn.Module], None]] = None) -> "Engine":
        """Loads a model in any accepted format (``mmtune.formats.detect.FORMATS``: a saved model, a training
        run or checkpoint, Meta, Hugging Face Llama-family or LLaVA, LLaMA2-Accessory). It is built on the
        meta device, split by ``prepare`` (tensor-parallel serving) and filled tensor by tensor on ``device``
        in ``dtype`` (None: fp32), so each rank reads and holds only its own slices."""
        from mmtune.formats.loading import load_any

        loaded = load_any(model_dir, device, dtype, prepare)
        model = loaded.model
        assert loaded.tokenizer is not None
        processor = Processor.from_sections(loaded.tokenizer, model.vision_cfg, model.connector_cfg)
        return cls(model, processor.with_max_image_pixels(max_image_pixels), template)

    def describe(self) -> dict:
        """What front ends show: the template names and the default."""
        return {"templates": self.processor.templates(), "default_template": self.default_template,
                "max_seq_len": self.max_seq_len}

    def _record(self, request: ChatRequest, answer: Optional[str] = None) -> Record:
        messages = list(request.messages)
        if request.system_prompt is not None:  # "" is a prompt too: no system sentence, as data.system_prompt ""
            messages = [Message("system", request.system_prompt)] + [m for m in messages if m.role != "system"]
        if answer is not None:
            messages.append(Message("assistant", answer))
        return Record(messages=tuple(messages), image=request.image, prefix=request.prefix)

    def _pixels(self, image: Optional[bytes]) -> Optional[torch.Tensor]:
        if image is None:
            return None
        if self.processor.image_transform is None:
            raise DataError("this model has no vision tower; send text only")
        return self.processor.image_transform(image).unsqueeze(0)

    def prepare(self, request: ChatRequest) -> Prepared:
        """Renders the prompt and decodes the image; raises MMTuneError for user mistakes."""
        template = request.template or self.default_template
        prompt_ids = self.processor.generation_prompt(self._record(request), template)
        room = self.max_seq_len - len(prompt_ids)
        if room <= 0:
            raise DataError(f"the prompt takes {len(prompt_ids)} tokens; the model holds {self.max_seq_len}")
        params = SamplingParams(max_new_tokens=min(request.max_new_tokens, room), temperature=request.temperature,
                                top_p=request.top_p, seed=request.seed, stop_ids=(self.tokenizer.eos_id,))
        params.check()
        return Prepared(prompt_ids, self._pixels(request.image), params, keep_leading_space=bool(request.prefix))

    def run(self, prepared: Prepared, on_text: Optional[Callable[[str], None]] = None) -> Completion:
        """Generates the answer to a prepared request, streaming its text through ``on_text``."""
        stream = TextStream(self.tokenizer, prepared.prompt_ids[-1], prepared.keep_leading_space, on_text)
        pixels = None if prepared.pixel_values is None else prepared.pixel_values.to(self.device, self.dtype)
        ids = generate(self.model, [prepared.prompt_ids], pixels, prepared.params,
                       on_token=lambda _row, token: stream.push(token))[0]
        finish = "length" if len(ids) >= prepared.params.max_new_tokens else "stop"
        return Completion(text=stream.finish(), token_ids=ids, prompt_tokens=len(prepared.prompt_ids),
                          finish_reason=finish)

    def generate(self, request: ChatRequest, on_text: Optional[Callable[[str], None]] = None) -> Completion:
        """``run(prepare(request))``."""
        return self.run(self.prepare(request), on_text)

    def run_batch(self, batch: list[Prepared]) -> list[Completion]:
        """Generates several prepared requests in one left-padded batch.

        They share their sampling params but for ``max_new_tokens``, which ``prepare`` may have lowered
        to fit a long prompt: the batch gets the largest, and generation stops where the longest prompt
        fills the context, as one request alone would."""
        params = dataclasses.replace(batch[0].params, max_new_tokens=max(p.params.max_new_tokens for p in batch))
        assert all(dataclasses.replace(p.params, max_new_tokens=params.max_new_tokens) == params for p in batch), \
            "a batch shares one set of sampling params"
        images = [p.pixel_values for p in batch if p.pixel_values is not None]
        pixels = torch.cat(images).to(self.device, self.dtype) if images else None
        outs = generate(self.model, [p.prompt_ids for p in batch], pixels, params)
        budget = min(params.max_new_tokens, self.max_seq_len - max(len(p.prompt_ids) for p in batch))
        completions = []
        for prepared, ids in zip(batch, outs):
            stream = TextStream(self.tokenizer, prepared.prompt_ids[-1], prepared.keep_leading_space)
            for token in ids:
                stream.push(token)
            finish = "length" if len(ids) >= budget else "stop"
            completions.append(Completion(stream.finish(), ids, len(prepared.prompt_ids), finish))
        return completions

    @torch.inference_mode()
    def score(self, request: ChatRequest, answer: str, with_eos: bool = False) -> Score:
        """Log-probabilities of ``answer``'s tokens after the rendered prompt (as training tokenises it)."""
        template = request.template or self.default_template
        prompt_ids, answer_ids = self.processor.prompt_and_answer(self._record(request, answer), template, with_eos)
        if not answer_ids:
            raise DataError("the answer is empty: nothing to score")
        ids = prompt_ids + answer_ids
        if len(ids) > self.max_seq_len:
            raise DataError(f"prompt and answer take {len(ids)} tokens; the model holds {self.max_seq_len}")
        input_ids = torch.tensor([ids], device=self.device)
        pixels = self._pixels(request.image)
        logits = self.model(input_ids, None if pixels is None else pixels.to(self.device, self.dtype)).float()
        logprobs = torch.log_softmax(logits[0, len(prompt_ids) - 1:-1], dim=-1)
        picked = logprobs.gather(-1, torch.tensor(answer_ids, device=self.device)[:, None])[:, 0]
        return Score(prompt_ids, answer_ids, picked.tolist())
