"""What the tests and the benchmarks share, kept out of the runtime package: a whole system of
its own on free ports (sandbox), components started as processes and stopped by their pid
(processes), and a viewer that records what it receives (viewer)."""
