"""Benchmarks (not tests): ingest throughput and series/slice-to-result latency. See README.md."""
