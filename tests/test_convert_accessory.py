"""LLaMA2-Accessory ``llama_qformerv2`` checkpoints -> mmtune, proven on tiny checkpoints in their layout.

The test holds a small faithful re-implementation of Accessory's model (``accessory/model/LLM/
llama_qformerv2.py``: Meta-style decoder with complex RoPE, a transformers ``Blip2Model`` as
``qformer`` with its language model set to None, ``qformer_proj`` Linear+LayerNorm, ``start_img`` /
``end_img``; forward ``[BOS][start][queries][end][text...]``, logits from the ``end_img`` position on),
writes its state dict the way Accessory's ``save_checkpoint`` does (``{"model": state_dict}`` under
``llma.*`` keys in fairscale model-parallel shards, ``config.json`` = ``asdict(ModelArgs)``,
``meta.json``), converts it, and compares logits with mmtune's model fed through the data contract
(BOS, then ``num_image_tokens`` placeholder ids, then the text).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import Blip2Config, Blip2Model

from mmtune.cli import main
from mmtune.config import VisionConfig, build
from mmtune.errors import CheckpointError
from mmtune.formats.convert_accessory import accessory_source
from mmtune.formats.pipeline import write_saved_model
from mmtune.models.adapters import meta
from mmtune.models.io import load_model
from mmtune.models.tokenizer import Tokenizer
from mmtune.presets import VISION_PRESETS

DIM, LAYERS, HEADS, KV_HEADS, VOCAB, QUERIES = 64, 2, 4, 2, 32000, 4
ARGS = dict(dim=DIM, n_layers=LAYERS, n_heads=HEADS, n_kv_heads=KV_HEADS, vocab_size=VOCAB, multiple_of=32,
            ffn_dim_multiplier=None, norm_eps=1e-5, max_batch_size=32, max_seq_len=128, rope_scaling=None)


# ----------------------------------------------------------- Accessory's model, re-implemented faithfully

def precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0) -> torch.Tensor:
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: (dim // 2)].float() / dim))
    t = torch.arange(end)
    return torch.polar(torch.ones(end, dim // 2), torch.outer(t, freqs).float())


def apply_rotary_emb(xq, xk, freqs_cis):
    xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
    xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
    freqs_cis = freqs_cis.view(1, xq_.shape[1], 1, xq_.shape[-1])
    return (torch.view_as_real(xq_ * freqs_cis).flatten(3).type_as(xq),
            torch.view_as_real(xk_ * freqs_cis).flatten(3).type_as(xk))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(1 + 0.1 * torch.randn(dim))

    def forward(self, x):
        return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.head_dim = DIM // HEADS
        self.wq = nn.Linear(DIM, HEADS * self.head_dim, bias=False)
        self.wk = nn.Linear(DIM, KV_HEADS * self.head_dim, bias=False)
        self.wv = nn.Linear(DIM, KV_HEADS * self.head_dim, bias=False)
        self.wo = nn.Linear(HEADS * self.head_dim, DIM, bias=False)

    def forward(self, x, freqs_cis):
        b, t, _ = x.shape
        xq = self.wq(x).view(b, t, HEADS, self.head_dim)
        xk = self.wk(x).view(b, t, KV_HEADS, self.head_dim)
        xv = self.wv(x).view(b, t, KV_HEADS, self.head_dim)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis)
        rep = HEADS // KV_HEADS  # repeat_kv
        keys = xk[:, :, :, None, :].expand(b, t, KV_HEADS, rep, self.head_dim).reshape(b, t, HEADS, self.head_dim)
        values = xv[:, :, :, None, :].expand(b, t, KV_HEADS, rep, self.head_dim).reshape(b, t, HEADS, self.head_dim)
        mask = (torch.arange(t) - t).view(-1, 1) >= (torch.arange(t) - t).view(1, -1)  # _make_causal_mask
        out = F.scaled_dot_product_attention(xq.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                             attn_mask=mask)
        return self.wo(out.transpose(1, 2).contiguous().view(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self):
        super().__init__()
        hidden = int(2 * (4 * DIM) / 3)
        hidden = ARGS["multiple_of"] * ((hidden + ARGS["multiple_of"] - 1) // ARGS["multiple_of"])
        self.w1, self.w2, self.w3 = nn.Linear(DIM, hidden, False), nn.Linear(hidden, DIM, False), nn.Linear(DIM, hidden, False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention, self.feed_forward = Attention(), FeedForward()
        self.attention_norm, self.ffn_norm = RMSNorm(DIM, 1e-5), RMSNorm(DIM, 1e-5)

    def forward(self, x, freqs_cis):
        h = x + self.attention(self.attention_norm(x), freqs_cis)
        return h + self.feed_forward(self.ffn_norm(h))


def blip2_config(text_branch: bool = False) -> Blip2Config:
    hf = VISION_PRESETS["debug-blip2"]["hf_config"]
    return Blip2Config(vision_config=hf["vision_config"],
                       qformer_config={**hf["qformer_config"], "use_qformer_text_input": text_branch},
                       num_query_tokens=QUERIES,
                       text_config=dict(model_type="opt", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        ffn_dim=64, vocab_size=64, word_embed_proj_dim=32))


class AccessoryTransformer(nn.Module):
    """``llama_qformerv2.Transformer(params, with_visual=True)`` at tiny size."""

    def __init__(self):
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleList(TransformerBlock() for _ in range(LAYERS))
        self.norm = RMSNorm(DIM, 1e-5)
        self.output = nn.Linear(DIM, VOCAB, bias=False)
        self.freqs_cis = precompute_freqs_cis(DIM // HEADS, ARGS["max_seq_len"] * 2)
        # Released checkpoints were saved by a transformers version whose Q-Former kept its text branch.
        self.qformer = Blip2Model(blip2_config(text_branch=True))
        self.qformer.language_projection = None
        self.qformer.language_model = None
        self.qformer_proj = nn.Sequential(nn.Linear(32, DIM), nn.LayerNorm(DIM))
        self.start_img = nn.Parameter(torch.rand(1, 1, DIM))
        self.end_img = nn.Parameter(torch.rand(1, 1, DIM))
        with torch.no_grad():
            for p in self.qformer_proj[1].parameters():
                p.add_(0.1 * torch.randn_like(p))

    def encode_image(self, image):
        with torch.no_grad():
            feats = self.qformer.get_qformer_features(pixel_values=image)
        return self.qformer_proj(getattr(feats, "last_hidden_state", feats))

    def forward(self, examples, image=None):
        bsz, seqlen = examples.shape
        h = self.tok_embeddings(examples)
        image_words = 0
        if image is not None:
            h_bos, h_caption = h[:, :1], h[:, 1:]
            image_tokens = self.encode_image(image)
            h = torch.cat((h_bos, self.start_img.expand(bsz, -1, -1), image_tokens,
                           self.end_img.expand(bsz, -1, -1), h_caption), dim=1)
            image_words = image_tokens.shape[1] + 1 + 1
            seqlen = h.shape[1]
        freqs_cis = self.freqs_cis[:seqlen]
        for layer in self.layers:
            h = layer(h, freqs_cis)
        return self.output(self.norm(h)[:, image_words:, :])


def write_accessory_checkpoint(root: Path, model: AccessoryTransformer, mp: int, tokenizer: Path,
                               with_blip2: bool = True, config: bool = True) -> None:
    """Writes ``model`` as ``misc.save_checkpoint`` does: ``consolidated.NN-of-MM.model.pth`` in bf16."""
    root.mkdir(parents=True)
    state = {f"llma.{k}": v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    if not with_blip2:
        state = {k: v for k, v in state.items() if not k.startswith("llma.qformer.")}
    for rank in range(mp):
        shard = {}
        for key, tensor in state.items():
            name = key[len("llma."):]
            decoder = not name.startswith(("qformer", "start_img", "end_img"))
            pieces = meta.split_for_model_parallel(tensor, meta.shard_dim(name) if decoder else None, mp)
            shard[key] = pieces[rank]
        torch.save({"model": shard}, root / f"consolidated.{rank:02d}-of-{mp:02d}.model.pth")
    if config:
        (root / "config.json").write_text(json.dumps(ARGS))
    (root / "meta.json").write_text(json.dumps({"llama_type": "llama_qformerv2"}))
    (root / "tokenizer.model").write_bytes(tokenizer.read_bytes())


@pytest.fixture(scope="module")
def accessory_model() -> AccessoryTransformer:
    torch.manual_seed(0)
    model = AccessoryTransformer().eval()
    with torch.no_grad():  # bf16 round trip so the saved checkpoint and this reference agree exactly
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return model


@pytest.fixture
def tokenizer_file(llama_tokenizer_dir) -> Path:
    return Path(llama_tokenizer_dir) / "tokenizer.model"


def debug_blip2() -> VisionConfig:
    return build(VisionConfig, {"preset": "debug-blip2"}, "vision")


def _compare(accessory: AccessoryTransformer, out: Path, tokenizer_file: Path) -> None:
    model = load_model(out, dtype=torch.float32)
    tok = Tokenizer.from_path(out)
    assert model.num_image_tokens == QUERIES + 2 and model.model_cfg.vocab_size == VOCAB
    assert tok.image_token_id == VOCAB  # <image> comes right after Accessory's 32000 tokens
    text = tok.encode("Describe the image. ### Response: a red circle")
    pixels = torch.randn(2, 3, 32, 32)
    theirs_ids = torch.tensor([[tok.bos_id] + text] * 2)
    ours_ids = torch.tensor([[tok.bos_id] + [tok.image_token_id] * model.num_image_tokens + text] * 2)
    with torch.no_grad():
        theirs = accessory(theirs_ids, pixels)
        ours = model(ours_ids, pixels)[:, model.num_image_tokens:]
        text_only = accessory(theirs_ids)
        ours_text = model(theirs_ids)
    assert ours.shape == theirs.shape == (2, len(text) + 1, VOCAB)
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(ours_text, text_only, atol=2e-4, rtol=1e-4)


def test_released_layout_converts_with_identical_logits(tmp_path, accessory_model, tokenizer_file):
    write_accessory_checkpoint(tmp_path / "ckpt", accessory_model, mp=2, tokenizer=tokenizer_file)
    source = accessory_source(tmp_path / "ckpt", vision=debug_blip2())
    out = write_saved_model(source, tmp_path / "out")
    _compare(accessory_model, out, tokenizer_file)
    config = json.loads((out / "config.json").read_text())
    assert config["connector"]["kind"] == "qformer" and config["vision"]["kind"] == "blip2"


def _blip2_dir(root: Path, accessory: AccessoryTransformer) -> Path:
    """A local Hugging Face BLIP-2 directory (language model included, as on the Hub)."""
    root.mkdir()
    full = Blip2Model(blip2_config())
    state = {**full.state_dict(), **{k: v for k, v in accessory.qformer.state_dict().items()
                                     if k in full.state_dict()}}
    save_file({k: v.clone().contiguous() for k, v in state.items()}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps(blip2_config().to_dict()))
    return root


def test_blip2_weights_from_a_local_directory(tmp_path, accessory_model, tokenizer_file):
    write_accessory_checkpoint(tmp_path / "ckpt", accessory_model, mp=1, tokenizer=tokenizer_file, with_blip2=False)
    with pytest.raises(CheckpointError, match="BLIP-2 weights are not in the checkpoint; pass --blip2"):
        accessory_source(tmp_path / "ckpt")
    blip2 = _blip2_dir(tmp_path / "blip2", accessory_model)
    assert main(["convert", "accessory", "--ckpt-dir", str(tmp_path / "ckpt"), "--blip2", str(blip2),
                 "--out", str(tmp_path / "out"), "--dtype", "fp32"]) == 0
    _compare(accessory_model, tmp_path / "out", tokenizer_file)


def test_missing_config_needs_params(tmp_path, accessory_model, tokenizer_file):
    write_accessory_checkpoint(tmp_path / "ckpt", accessory_model, mp=2, tokenizer=tokenizer_file, config=False)
    with pytest.raises(CheckpointError, match="no config.json; pass the model's params.json"):
        accessory_source(tmp_path / "ckpt", vision=debug_blip2())
    params = tmp_path / "13B_params.json"
    params.write_text(json.dumps({k: v for k, v in ARGS.items() if k not in ("max_batch_size", "rope_scaling")}))
    source = accessory_source(tmp_path / "ckpt", params=params, vision=debug_blip2())
    assert (source.model.dim, source.model.n_kv_heads, source.model.vocab_size) == (DIM, KV_HEADS, VOCAB)


def test_bad_checkpoints_are_refused(tmp_path, accessory_model, tokenizer_file):
    write_accessory_checkpoint(tmp_path / "ckpt", accessory_model, mp=2, tokenizer=tokenizer_file)
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps({"llama_type": "llama_ens"}))
    with pytest.raises(CheckpointError, match="llama_type 'llama_ens' is not supported"):
        accessory_source(tmp_path / "ckpt", vision=debug_blip2())
    (tmp_path / "ckpt" / "meta.json").write_text(json.dumps({"llama_type": "llama_qformerv2"}))
    (tmp_path / "ckpt" / "consolidated.01-of-02.model.pth").unlink()
    with pytest.raises(CheckpointError, match=r"missing shards \[1\] of 2"):
        accessory_source(tmp_path / "ckpt", vision=debug_blip2())
    torch.save({"llma.tok_embeddings.weight": torch.zeros(2)}, tmp_path / "ckpt" / "consolidated.01-of-02.model.pth")
    with pytest.raises(CheckpointError, match=r"expected LLaMA2-Accessory's \{'model': state_dict\} layout"):
        write_saved_model(accessory_source(tmp_path / "ckpt", vision=debug_blip2()), tmp_path / "out")


def test_wrong_tower_config_is_a_shape_error(tmp_path, accessory_model, tokenizer_file):
    write_accessory_checkpoint(tmp_path / "ckpt", accessory_model, mp=1, tokenizer=tokenizer_file)
    wrong = build(VisionConfig, {"preset": "debug-blip2", "hf_config": {
        **VISION_PRESETS["debug-blip2"]["hf_config"], "num_query_tokens": 8}}, "vision")
    with pytest.raises(CheckpointError, match=r"shape mismatches.*vision.query_tokens \(1, 4, 32\) != \(1, 8, 32\)"):
        write_saved_model(accessory_source(tmp_path / "ckpt", vision=wrong), tmp_path / "out")


def test_key_mapping():
    from mmtune.models.adapters.accessory import from_accessory_key

    assert from_accessory_key("llma.layers.0.attention.wq.weight") == ("llm.layers.0.attention.wq.weight", 0)
    assert from_accessory_key("llma.tok_embeddings.weight") == ("llm.tok_embeddings.weight", 1)
    assert from_accessory_key("llma.qformer_proj.1.bias") == ("connector.proj.1.bias", None)
    assert from_accessory_key("llma.start_img") == ("connector.start_img", None)
    assert from_accessory_key("llma.qformer.query_tokens") == ("vision.query_tokens", None)
    assert from_accessory_key("llma.qformer.qformer.layernorm.weight") == ("vision.qformer.layernorm.weight", None)
    with pytest.raises(CheckpointError, match="no 'llma.' prefix"):
        from_accessory_key("layers.0.attention.wq.weight")
