"""Benchmarks of l2-session: `make bench` (python -m benchmarks); figures in docs/benchmarks.md."""
