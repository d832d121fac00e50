"""Readers of the standard benchmarks' official release files: each turns them into evaluation items."""
