"""Text generation: greedy or temperature + top-p sampling, with a KV cache and a streaming callback.

``generate`` takes a model with ``llm`` (a :class:`~mmtune.models.llama.Transformer`) and
``embed_inputs(input_ids, pixel_values) -> [B, T, dim]`` (the ``VisionLanguageModel`` contract), or a
bare ``Transformer`` for text only. Prompts of different lengths are left-padded: each row has its own
RoPE positions and its padding has sample id -1, so it is never attended to. The prompt (image
positions included) is prefilled once into the cache, then tokens are decoded one at a time by
:func:`decode_step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from mmtune.errors import ConfigError
from mmtune.models.llama import KVCache, Transformer

TokenCallback = Callable[[int, int], None]


@dataclass
class SamplingParams:
    """How new tokens are chosen and when a row stops."""

    max_new_tokens: int = 256
    """Most tokens generated per prompt (also capped by the decoder's max_seq_len)."""
    temperature: float = 0.0
    """0 picks the most likely token (greedy); higher values sample from a flatter distribution."""
    top_p: float = 1.0
    """Nucleus sampling: draw only from the smallest set of tokens whose probability reaches top_p."""
    seed: Optional[int] = None
    """Seed of the sampling generator; the same seed gives the same tokens. None draws a fresh one."""
    stop_ids: Sequence[int] = ()
    """A row stops at the first of these ids."""
    include_stop: bool = False
    """Also return (and stream) the stop id that ended a row, so callers can tell a stop from the budget."""

    def check(self) -> None:
        """Raises :class:`ConfigError` (a ``ValueError``) for values outside their range."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 0:
            raise ConfigError("sampling.max_new_tokens", self.max_new_tokens, "an integer >= 0")
        if not self.temperature >= 0:
            raise ConfigError("sampling.temperature", self.temperature, "a number >= 0 (0 is greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("sampling.top_p", self.top_p, "a number in (0, 1]")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or self.seed < 0):
            raise ConfigError("sampling.seed", self.seed, "an integer >= 0 or null")
        if not all(isinstance(i, int) and i >= 0 for i in self.stop_ids):
            raise ConfigError("sampling.stop_ids", list(self.stop_ids), "token ids (integers >= 0)")


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Picks one token per row from ``logits`` [B, vocab]: argmax at temperature 0, else a draw from the
    tempered distribution restricted to its top-p nucleus (the most likely token is always kept)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class VocabHead:
    """The decoder's vocabulary projection as decoding applies it to one position per row.

    On the CPU the BLAS kernel behind ``F.linear``'s ``x @ W^T`` is slow for the few rows of a decode
    step, and the head is most of a small model's decode step. Measured for a 32000 x 256 head on one
    thread (docs/benchmarks.md): one row is fastest as ``x @ W_t`` with a contiguous ``[dim, vocab]``
    copy ``W_t`` (made once per :func:`generate` call), 2 to 8 rows as ``(W @ x^T)^T`` on the weight as
    stored, more rows as ``x @ W_t`` again. Elsewhere it is ``llm.output`` itself.
    """

    STORED_LAYOUT_ROWS = range(2, 9)
    """Row counts that multiply the stored ``[vocab, dim]`` weight from the left."""

    def __init__(self, llm: Transformer):
        weight = llm.output.weight
        self.output = llm.output
        self.weight = weight.detach()
        self.weight_t = self.weight.t().contiguous() if weight.device.type == "cpu" else None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` [B, dim] -> fp32 logits [B, vocab]."""
        if self.weight_t is None:
            return self.output(hidden).float()
        if hidden.shape[0] in self.STORED_LAYOUT_ROWS:
            return torch.mm(self.weight, hidden.t()).t().float()
        return torch.mm(hidden, self.weight_t).float()


def next_token_logits(llm: Transformer, *, tokens: Optional[torch.Tensor] = None,
                      embeds: Optional[torch.Tensor] = None, positions: torch.Tensor,
                      sample_ids: Optional[torch.Tensor] = None, cache: Optional[KVCache] = None,
                      head: Optional[VocabHead] = None) -> torch.Tensor:
    """fp32 logits [B, vocab] of the last position only (the vocabulary head runs on one position);
    ``head`` (a :class:`VocabHead`) replaces ``llm.output`` when given."""
    hidden = llm(tokens, embeds=embeds, positions=positions, sample_ids=sample_ids, cache=cache,
                 return_hidden=True)
    return head(hidden[:, -1]) if head is not None else llm.output(hidden[:, -1]).float()


def decode_step(llm: Transformer, tokens: torch.Tensor, positions: torch.Tensor,
                cache: KVCache, head: Optional[VocabHead] = None) -> torch.Tensor:
    """One cached decoding step: ``tokens`` and ``positions`` [B, 1] -> next-token logits [B, vocab]."""
    return next_token_logits(llm, tokens=tokens, positions=positions, cache=cache, head=head)


def _left_pad(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, ...]:
    """(input_ids, positions, sample_ids), each [B, longest], with padding on the left."""
    longest = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), longest, dtype=torch.long)
    positions = torch.zeros_like(ids)
    sample_ids = torch.full_like(ids, -1)
    for row, prompt in enumerate(prompts):
        start = longest - len(prompt)
        ids[row, start:] = torch.tensor(prompt, dtype=torch.long)
        positions[row, start:] = torch.arange(len(prompt))
        sample_ids[row, start:] = 0
    return ids.to(device), positions.to(device), sample_ids.to(device)


def _check_prompts(prompts: list[list[int]], max_seq_len: int) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("prompts", prompts if not prompts else [len(p) for p in prompts],
                          "a non-empty list of non-empty token lists")
    longest = max(len(p) for p in prompts)
    if longest >= max_seq_len:
        raise ConfigError("prompts", f"{longest} tokens", f"fewer than max_seq_len={max_seq_len}")


class _Decoder:
    """Feeds tokens to the decoder, with the KV cache or by re-running the whole sequence."""

    def __init__(self, llm: Transformer, embeds: torch.Tensor, positions: torch.Tensor,
                 sample_ids: torch.Tensor, budget: int, use_cache: bool):
        self.llm = llm
        self.embeds, self.positions, self.sample_ids = embeds, positions, sample_ids
        self.cache = (KVCache.for_model(llm, embeds.shape[0], embeds.shape[1] + budget)
                      if use_cache else None)
        self.head = VocabHead(llm) if budget > 1 else None  # the copy pays off only over decode steps

    def first(self) -> torch.Tensor:
        """Logits after the prompt (prefilling the cache when there is one)."""
        return next_token_logits(self.llm, embeds=self.embeds, positions=self.positions,
                                 sample_ids=self.sample_ids, cache=self.cache)

    def next(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits after appending ``tokens`` [B] at ``positions`` [B]."""
        tokens, positions = tokens[:, None], positions[:, None]
        if self.cache is not None:
            return decode_step(self.llm, tokens, positions, self.cache, self.head)
        self.embeds = torch.cat([self.embeds, self.llm.tok_embeddings(tokens)], dim=1)
        self.positions = torch.cat([self.positions, positions], dim=1)
        self.sample_ids = torch.cat([self.sample_ids, torch.zeros_like(tokens)], dim=1)
        return next_token_logits(self.llm, embeds=self.embeds, positions=self.positions,
                                 sample_ids=self.sample_ids, head=self.head)


def _embed(model: nn.Module, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor]) -> torch.Tensor:
    if hasattr(model, "embed_inputs"):
        return model.embed_inputs(input_ids, pixel_values)
    if pixel_values is not None:
        raise ConfigError("pixel_values", "images", "none for a text-only model")
    return model.tok_embeddings(input_ids)


def _generator(device: torch.device, seed: Optional[int]) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


@torch.inference_mode()
def generate(model: nn.Module, prompts: list[list[int]], pixel_values: Optional[torch.Tensor] = None,
             params: Optional[SamplingParams] = None, on_token: Optional[TokenCallback] = None,
             use_cache: bool = True) -> list[list[int]]:
    """Continues each prompt; returns the new token ids per prompt (stop ids left out unless
    ``params.include_stop``).

    ``model`` is a ``VisionLanguageModel`` (``llm`` + ``embed_inputs``) or a bare ``Transformer``;
    ``prompts`` already hold the image placeholder positions for ``pixel_values``. ``on_token(row,
    token_id)`` is called for every returned token as soon as it is chosen. ``use_cache=False`` re-runs
    the whole sequence each step (slow; a reference for the cached path). The caller picks the mode
    (``model.eval()``) and device; tensors are created where the decoder's weights are.
    """
    params = params or SamplingParams()
    params.check()
    llm: Transformer = getattr(model, "llm", model)
    _check_prompts(prompts, llm.cfg.max_seq_len)
    budget = min(params.max_new_tokens, llm.cfg.max_seq_len - max(len(p) for p in prompts))
    device = llm.tok_embeddings.weight.device
    ids, positions, sample_ids = _left_pad(prompts, device)
    decoder = _Decoder(llm, _embed(model, ids, pixel_values), positions, sample_ids, budget, use_cache)
    generator = _generator(device, params.seed)
    next_pos = torch.tensor([len(p) for p in prompts], device=device)
    done = [False] * len(prompts)
    out: list[list[int]] = [[] for _ in prompts]
    logits = decoder.first() if budget else None
    for step in range(budget):
        tokens = sample_next(logits, params.temperature, params.top_p, generator)
        if step < budget - 1:  # queued before the host reads the tokens, so device and host overlap
            logits = decoder.next(tokens, next_pos + step)
        for row, token in enumerate(tokens.tolist()):  # the one host sync of a step
            if not done[row]:
                _emit(row, token, params, done, out, on_token)
        if all(done):
            break
    return out


def _emit(row: int, token: int, params: SamplingParams, done: list[bool], out: list[list[int]],
          on_token: Optional[TokenCallback]) -> None:
    """Records the token chosen for an unfinished ``row``: a stop id ends the row (and is returned only
    with ``include_stop``)."""
    stopped = token in params.stop_ids
    done[row] = stopped
    if stopped and not params.include_stop:
        return
    out[row].append(token)
    if on_token is not None:
        on_token(row, token)
