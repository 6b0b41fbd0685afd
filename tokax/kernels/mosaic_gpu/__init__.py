"""Mosaic GPU Pallas kernels (Hopper-first; import on any backend, run only on NVIDIA GPUs)."""
