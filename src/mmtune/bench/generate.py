"""Generation benchmark: mmtune's cached decoder against transformers' ``generate`` on the same weights.

Both sides run the language model of one saved-model directory on the same left-padded text prompts,
greedy, with a fixed number of new tokens (no early stop). Prefill throughput is prompt tokens per
second of the first forward pass; decode throughput is new tokens per second after it, measured as
the difference between a run that generates ``n`` tokens and one that generates 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from mmtune.bench.timing import interleaved_medians
from mmtune.models.adapters.hf_llama import to_hf_config, to_hf_state_dict
from mmtune.models.generate import SamplingParams, generate
from mmtune.models.llama import Transformer


@dataclass
class GenerateBenchResult:
    """Throughput of one side of the comparison."""

    name: str
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


def hf_causal_lm(llm: Transformer) -> torch.nn.Module:
    """A ``transformers.LlamaForCausalLM`` holding ``llm``'s weights (same dtype and device, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(**to_hf_config(llm.cfg)))
    state = {k: v for k, v in llm.state_dict().items()}
    hf.load_state_dict(to_hf_state_dict(state, llm.cfg), strict=False)
    weight = llm.tok_embeddings.weight
    return hf.to(device=weight.device, dtype=weight.dtype).eval()


def _prompts(batch: int, prompt_len: int, vocab: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, prompt_len), generator=gen).tolist()


def mmtune_run(llm: Transformer, prompts: list[list[int]], n: int) -> Callable[[], object]:
    """A call of :func:`mmtune.models.generate.generate` producing ``n`` tokens per prompt (greedy)."""
    return lambda: generate(llm, prompts, params=SamplingParams(max_new_tokens=n))


def transformers_run(hf: torch.nn.Module, prompts: list[list[int]], n: int) -> Callable[[], object]:
    """A call of transformers' ``generate`` producing exactly ``n`` tokens per prompt (greedy, KV cache)."""
    ids = torch.tensor(prompts, device=hf.device)
    mask = torch.ones_like(ids)

    def call() -> object:
        with torch.inference_mode():
            return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, use_cache=True, pad_token_id=0).cpu()  # waits for the device
    return call


def _result(name: str, prompts: list[list[int]], new_tokens: int, t_first: float, t_all: float) -> GenerateBenchResult:
    batch, prompt_tokens = len(prompts), sum(len(p) for p in prompts)
    decode_time = max(t_all - t_first, 1e-9)
    return GenerateBenchResult(name, prompt_tokens / t_first, batch * (new_tokens - 1) / decode_time)


def run_generate_bench(llm: Transformer, *, batch: int = 1, prompt_len: int = 128, new_tokens: int = 64,
                       repeats: int = 3, seed: int = 0) -> list[GenerateBenchResult]:
    """Both sides on the same prompts, their runs interleaved; the decoder is put in eval mode."""
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be at least 2 to time decoding, got {new_tokens}")
    if prompt_len + new_tokens > llm.cfg.max_seq_len:
        raise ValueError(f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds the model's "
                         f"max_seq_len {llm.cfg.max_seq_len}")
    llm.eval()
    prompts = _prompts(batch, prompt_len, llm.cfg.vocab_size, seed)
    hf = hf_causal_lm(llm)
    fns = [mmtune_run(llm, prompts, 1), mmtune_run(llm, prompts, new_tokens),
           transformers_run(hf, prompts, 1), transformers_run(hf, prompts, new_tokens)]
    t = interleaved_medians(fns, repeats)
    return [_result("mmtune", prompts, new_tokens, t[0], t[1]), _result("transformers", prompts, new_tokens, t[2], t[3])]
