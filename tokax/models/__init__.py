"""Flax linen models."""
from tokax.models.t2t_vit import T2TViT
from tokax.models.vit import ViT, parse_variant

__all__ = ["T2TViT", "ViT", "parse_variant"]
