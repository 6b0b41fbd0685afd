"""Attention kernels: one public entry point, pure-jnp references beside it."""
from tokax.kernels.attention import IMPLEMENTATIONS, attention
from tokax.kernels.reference import attention_reference

__all__ = ["IMPLEMENTATIONS", "attention", "attention_reference"]
