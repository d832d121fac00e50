"""The trainer: optimizer, schedule, loss, checkpoints, metrics. Composes models/, data/ and distributed/."""
