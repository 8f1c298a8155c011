"""Throughput and memory benchmarks of the streaming pipeline against its ceiling and the naive way."""
