"""Process groups and parallelism: FSDP2, tensor parallel, activation checkpointing, compile."""
