"""Evaluation metrics (captioning and VQA) and the evaluation runner."""
