"""The one inference engine: a loaded model and its processor answer requests (greedy or sampled, one
at a time or in batches) and score answers. ``mmtune generate``, ``chat``, ``serve`` and ``eval`` all
run on it."""
