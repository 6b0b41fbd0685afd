"""The contract between a ViT block and a reduction method.

A reduction is a small frozen (hashable) dataclass, so it can sit in a Flax module field and
`model.clone(reduction=...)` recompiles once per schedule. `prop_attn` asks attention to add
log(size) to every key's logit once tokens have been merged. `placement` says where in the block
it runs, and which of the methods below the block calls:

- "mid" (ToMe, EViT, PiToMe, DToMe): after the attention residual, before the MLP,
    tokens = reduction.reduce(tokens, metrics, layer=i, depth=L)
  `metrics` holds "keys" (B, N, Dh), the keys averaged over heads, plus the attention scores the
  method lists in `scores` ("cls", "received"; see tokax.kernels.attention).
- "pre" (MCTF's one-step-ahead attention): at the block input, with the block's own attention map,
    if reduction.attention_layer(layer=i, depth=L):
      tokens, probs = reduction.reduce_with_attention(tokens, probs, layer=i, depth=L)
  `probs` (B, H, N, N) are the softmax probabilities of this block on the unreduced tokens; the
  returned (B, H, N', N') map is used as this block's attention on the reduced tokens.
- "end" (SiT's token slimming): after the MLP residual, through a Flax module that may hold
  parameters: `module = reduction.module(layer=i, depth=L)` (None where the layer keeps its
  tokens), then `tokens = module(tokens, deterministic=...)`.

Post-encoder reducers (DivPrune, ToDRE, DCT, FasterVLM-style selection) have placement "post":
they are not block hooks but act on an encoder's output tokens, `reducer(tokens)`.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import jax

from tokax.reduction.tokens import Tokens

PLACEMENTS = ("mid", "pre", "end")  # block placements; "post" reducers run on encoder outputs


@runtime_checkable
class Reduction(Protocol):
  prop_attn: bool

  @property
  def placement(self) -> str: ...

  @property
  def scores(self) -> tuple[str, ...]: ...

  def reduce(self, tokens: Tokens, metrics: dict[str, jax.Array], *, layer: int, depth: int) -> Tokens: ...


def layer_scores(reduction: Reduction, *, layer: int, depth: int) -> tuple[str, ...]:
  """The attention scores block `layer` must produce for `reduction`.

  A method that needs scores only in some blocks defines `layer_scores(layer=, depth=)` (EViT: its
  pruning blocks), so the others can use kernels without score outputs (cuDNN flash attention);
  otherwise every block produces `reduction.scores`.
  """
  if hasattr(reduction, "layer_scores"):
    return tuple(reduction.layer_scores(layer=layer, depth=depth))
  return tuple(reduction.scores)
