"""The benchmarks: each runs as `python -m benchmarks.NAME` from the checkout root (docs/benchmarks.md)."""
