"""Checkpoint formats in and out: Meta's release, Hugging Face, LLaMA2-Accessory, HF/LLaVA export.

Composes models/ (decoder, VLM, adapters, saved-model I/O); sits at the training layer. Everything
here reads weights with safetensors or ``torch.load(weights_only=True)``: no pickled code runs.
"""
