"""Flax linen models."""
from tokax.models.vit import ViT, parse_variant

__all__ = ["ViT", "parse_variant"]
