"""Benchmarks: each one a script with --help; commands and figures in docs/benchmarks.md."""
