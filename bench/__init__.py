"""Benchmarks: each one runs as `.venv/bin/python -m bench.NAME` (with --help) and writes its run's
JSON file to bench/results/; `python -m bench.report` makes docs/benchmarks.md from them."""
