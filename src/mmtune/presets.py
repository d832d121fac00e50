"""Named sizes for the decoder and the vision towers, as plain field values.

A config section that says ``preset: llama2-13b`` starts from these values; fields given next to it
win. Real sizes are only ever instantiated on the meta device in tests.
"""

from __future__ import annotations

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN = [0.5, 0.5, 0.5]
SIGLIP_STD = [0.5, 0.5, 0.5]

MODEL_PRESETS: dict[str, dict] = {
    "debug": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32064, multiple_of=32,
                  max_seq_len=1024),
    "llama2-7b": dict(dim=4096, n_layers=32, n_heads=32, vocab_size=32000, multiple_of=256,
                      norm_eps=1e-5, max_seq_len=4096),
    "llama2-13b": dict(dim=5120, n_layers=40, n_heads=40, vocab_size=32000, multiple_of=256,
                       norm_eps=1e-5, max_seq_len=4096),
    "llama2-70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, vocab_size=32000,
                       multiple_of=4096, ffn_dim_multiplier=1.3, norm_eps=1e-5, max_seq_len=4096),
    "llama3-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256,
                      multiple_of=1024, ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0,
                      max_seq_len=8192),
    "llama3.1-8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256,
                        multiple_of=1024, ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0,
                        max_seq_len=131072,
                        rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_position_embeddings=8192)),
    "mistral-7b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=32000,
                       ffn_hidden_dim=14336, norm_eps=1e-5, rope_theta=10000.0, max_seq_len=32768),
}

VISION_PRESETS: dict[str, dict] = {
    "clip-vit-l-336": dict(
        kind="clip", feature_layer=-2, resize="pad", image_mean=CLIP_MEAN, image_std=CLIP_STD,
        hf_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                       num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                       hidden_act="quick_gelu")),
    "siglip-so400m": dict(
        kind="siglip", feature_layer=-2, resize="resize", image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD,
        hf_config=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                       num_attention_heads=16, image_size=384, patch_size=14)),
    "blip2-vitg-qformer": dict(
        kind="blip2", resize="center_crop", image_mean=CLIP_MEAN, image_std=CLIP_STD,
        hf_config=dict(
            num_query_tokens=32,
            vision_config=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                               num_attention_heads=16, image_size=224, patch_size=14),
            qformer_config=dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                intermediate_size=3072, encoder_hidden_size=1408,
                                cross_attention_frequency=2))),
    "debug-clip": dict(
        kind="clip", feature_layer=-2, resize="pad", image_mean=CLIP_MEAN, image_std=CLIP_STD,
        hf_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32)),
    "debug-siglip": dict(
        kind="siglip", feature_layer=-2, resize="resize", image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD,
        hf_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, image_size=32, patch_size=8)),
    "debug-blip2": dict(
        kind="blip2", resize="center_crop", image_mean=CLIP_MEAN, image_std=CLIP_STD,
        hf_config=dict(
            num_query_tokens=4,
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, image_size=32, patch_size=8),
            qformer_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, encoder_hidden_size=32,
                                cross_attention_frequency=2))),
}

_TABLES = {"ModelConfig": MODEL_PRESETS, "VisionConfig": VISION_PRESETS}


def table_for(config_class_name: str) -> dict[str, dict]:
    """The preset table for a config section class (empty when it has none)."""
    return _TABLES.get(config_class_name, {})
