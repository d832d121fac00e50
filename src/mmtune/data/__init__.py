"""Records -> token rows with loss masks; images -> tensors; sources, mixtures, packing, resumable loading.

Knows about models (tokenizer, image positions) but nothing about training."""
