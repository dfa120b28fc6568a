"""Benchmarks: one script per workload, each printing a ratio against a baseline run in the same process tree."""
