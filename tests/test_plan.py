"""The memory planner: parameter counts equal the real modules (meta device), activation estimate close
to the tensors autograd saves, and the documented goal (13B stage 2 on 8 x 80 GB with FSDP2 alone)."""

from __future__ import annotations

import json

import pytest
import torch

from mmtune.cli import main
from mmtune.config import ConnectorConfig, ModelConfig, TrainableConfig, VisionConfig, build
from mmtune.models.llama import Transformer, rope_rotation
from mmtune.models.vlm import VisionLanguageModel
from mmtune.planning import (
    Layout,
    Workload,
    activation_bytes_per_token,
    candidate_layouts,
    count_parameters,
    decoder_parameters,
    estimate,
    plan,
)


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset", ["llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "mistral-7b"])
def test_decoder_count_matches_the_module(preset):
    cfg = build(ModelConfig, {"preset": preset})
    with torch.device("meta"):
        assert decoder_parameters(cfg)[0] == _numel(Transformer(cfg))


def test_known_sizes_and_qwen_style_options():
    assert decoder_parameters(build(ModelConfig, {"preset": "llama2-13b"}))[0] == 13_015_864_320
    assert decoder_parameters(build(ModelConfig, {"preset": "llama2-7b"}))[0] == 6_738_415_616
    qwen = ModelConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=500, ffn_hidden_dim=96,
                       qkv_bias=True, tie_embeddings=True)
    assert decoder_parameters(qwen)[0] == _numel(Transformer(qwen))


@pytest.mark.parametrize("model,vision,connector", [
    ("llama2-13b", "blip2-vitg-qformer", "qformer"),
    ("debug", "debug-clip", "mlp"),
    ("debug", "debug-siglip", "mlp"),
    ("debug", "debug-blip2", "mlp"),
])
def test_whole_model_count_matches_the_module(model, vision, connector):
    work = Workload(build(ModelConfig, {"preset": model}), build(VisionConfig, {"preset": vision}),
                    ConnectorConfig(kind=connector), TrainableConfig())
    counts = count_parameters(work)
    with torch.device("meta"):
        vlm = VisionLanguageModel(work.model, work.vision, work.connector, 0)
    assert counts.total == _numel(vlm)
    assert (counts.llm, counts.vision, counts.connector) == (_numel(vlm.llm), _numel(vlm.vision), _numel(vlm.connector))
    assert counts.trainable == counts.llm + counts.connector


def test_activation_estimate_is_close_to_what_autograd_saves():
    cfg = ModelConfig(dim=256, n_layers=1, n_heads=8, n_kv_heads=2, vocab_size=64, multiple_of=32, max_seq_len=64)
    model = Transformer(cfg).to(torch.bfloat16)
    x = torch.randn(2, 64, cfg.dim, dtype=torch.bfloat16, requires_grad=True)
    skip = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    saved: dict[int, int] = {x.untyped_storage().data_ptr(): x.numel() * 2}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in skip:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    rotation = rope_rotation(*(t[None].expand(2, -1, -1) for t in (model.rope_cos, model.rope_sin)))
    skip.add(rotation.untyped_storage().data_ptr())
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.layers[0](x, rotation, None)
    measured = sum(saved.values()) / x.shape[0] / x.shape[1]
    predicted = activation_bytes_per_token(cfg, tp=1, checkpointing=False)
    assert 0.8 < predicted / measured < 1.2


def _stage2_13b(**kw) -> Workload:
    return Workload(build(ModelConfig, {"preset": "llama2-13b"}), build(VisionConfig, {"preset": "blip2-vitg-qformer"}),
                    ConnectorConfig(kind="qformer"), TrainableConfig(), **kw)


def test_13b_stage2_fits_on_8x80gb_with_fsdp_alone():
    counts, estimates, best = plan(_stage2_13b(gpus=8, seq=512, micro_batch=4, gpu_mem_gb=80))
    assert best is not None and best.layout == Layout(tp=1, checkpointing=False)
    assert 40 < best.total < 80
    # Adam moments: 8 bytes per trainable parameter, sharded over the 8 GPUs.
    assert best.parts["optimizer"] == pytest.approx(counts.trainable * 8 / 8 / 1024**3, rel=0.01)


def test_layout_choices_and_what_does_not_fit():
    work = _stage2_13b(gpus=8, micro_batch=16, seq=2048, gpu_mem_gb=80)
    counts, estimates, best = plan(work)
    assert not estimate(work, counts, Layout(1, False)).fits
    assert best is not None and best.layout.checkpointing
    off, on = estimate(work, counts, Layout(2, False)), estimate(work, counts, Layout(2, True))
    assert on.parts["activations"] < off.parts["activations"] / 10
    assert plan(_stage2_13b(gpus=2))[2] is None  # issue #26: 13B full FT on 2 GPUs does not fit
    assert [layout.tp for layout in candidate_layouts(_stage2_13b(gpus=8))] == [1, 1, 2, 2, 4, 4, 8, 8]
    assert [layout.tp for layout in candidate_layouts(_stage2_13b(gpus=6))] == [1, 1, 2, 2]  # 40 heads: no 6


def test_plan_command(capsys):
    assert main(["plan", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"]["llm"] == 13_015_864_320
    assert data["cheapest"]["layout"] == {"tp": 1, "checkpointing": False}
    assert main(["plan", "--model", "llama2-70b", "--gpus", "8"]) == 1
    assert "no layout fits" in capsys.readouterr().out
    assert main(["plan", "--tp", "3"]) == 2
    assert main(["plan", "--model", "llama9"]) == 2
