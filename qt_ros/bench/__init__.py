"""Benchmarks: each verb prints one JSON object to stdout."""
