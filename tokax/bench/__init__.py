"""Benchmarks: throughput.py times models (tokax, and timm for comparison); tradeoff.py tables accuracy vs cost."""
