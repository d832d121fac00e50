"""Inference on top of a saved model: engine, web demo, OpenAI-compatible API, terminal chat."""
