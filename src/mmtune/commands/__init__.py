"""One module per ``mmtune`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

Keep top-level imports to the standard library; import torch and friends inside ``run``.
"""

MODEL_HELP = (  # the help of every --model option
    "the model, in any accepted format (detected from its files): saved model, training run or checkpoint, "
    "Meta release, Hugging Face Llama / Mistral / Qwen2 or LLaVA directory, LLaMA2-Accessory checkpoint")

WEIGHT_DTYPES = {"keep": None, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
"""``--dtype`` of the commands that write weights (``convert``, ``export``) -> torch dtype name (None: keep)."""
