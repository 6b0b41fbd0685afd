"""Mosaic TPU kernels."""
