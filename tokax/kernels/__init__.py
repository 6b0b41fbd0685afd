"""Attention and matching kernels: one public entry point each, pure-jnp references beside them."""
from tokax.kernels.attention import IMPLEMENTATIONS, attention
from tokax.kernels.matching import BlockSizes, bipartite_matching, matching_reference
from tokax.kernels.reference import attention_reference

__all__ = ["IMPLEMENTATIONS", "BlockSizes", "attention", "attention_reference", "bipartite_matching",
           "matching_reference"]
