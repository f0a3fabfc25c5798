"""Benchmarks and experiment scripts (run as `python bench/<script>.py`) and their helpers."""
