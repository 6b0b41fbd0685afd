"""Mosaic TPU Pallas kernels (run on the CPU in TPU interpret mode)."""
