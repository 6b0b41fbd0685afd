"""Mosaic GPU (Hopper) kernels."""
