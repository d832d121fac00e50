"""Formats in and out: Meta's release, Hugging Face, LLaMA2-Accessory in; Hugging Face / LLaVA export out.

Not training checkpoints (those are ``training/checkpoint.py``). Composes models/ (decoder, VLM,
adapters, the weights layer and saved-model I/O); sits at the training layer. Everything here reads
weights with safetensors (``models.weights``) or ``torch.load(weights_only=True)``: no pickled code runs.
"""
