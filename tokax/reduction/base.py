"""The contract between a ViT block and a reduction method.

A reduction is a small frozen (hashable) dataclass, so it can sit in a Flax module field and
`model.clone(reduction=...)` recompiles once per schedule. The block calls it as

    tokens = reduction.reduce(tokens, metrics, layer=i, depth=L)

where `metrics` holds what the block's attention produced: "keys" (B, N, Dh) keys averaged over
heads, plus any scores the method asked for in `scores` ("cls", "received"). `placement` says
where in the block it runs ("mid": after the attention residual, before the MLP, as ToMe/EViT do).
`prop_attn` asks attention to add log(size) to every key's logit once tokens have been merged.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax

from tokax.reduction.tokens import Tokens


@runtime_checkable
class Reduction(Protocol):
  prop_attn: bool

  @property
  def placement(self) -> str: ...

  @property
  def scores(self) -> tuple[str, ...]: ...

  def reduce(self, tokens: Tokens, metrics: dict[str, jax.Array], *, layer: int, depth: int) -> Tokens: ...
