"""Benchmarks behind `mmtune bench`: training, generation and data-loading throughput, each against a
baseline measured in the same run."""
