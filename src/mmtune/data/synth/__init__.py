"""A procedurally generated image world for the quickstart: scenes, their language, and writers.

Shipped as code (nothing downloaded) and deterministic from a seed; held-out scenes come from a
fixed part of the world that training never sees.
"""

from mmtune.data.synth.grammar import PHRASINGS, ParsedCaption, caption, caption_correct, parse_caption
from mmtune.data.synth.tasks import questions, text_task
from mmtune.data.synth.world import Scene, Shape, is_held_out, render, sample_scene, sample_scenes
from mmtune.data.synth.writers import WorldSizes, write_tokenizer, write_world

__all__ = [
    "PHRASINGS", "ParsedCaption", "Scene", "Shape", "WorldSizes", "caption", "caption_correct",
    "is_held_out", "parse_caption", "questions", "render", "sample_scene", "sample_scenes", "text_task",
    "write_tokenizer", "write_world",
]
