"""The contract between a model and a reduction method.

A method is a small frozen (hashable) dataclass, so it can sit in a Flax module field and
`model.clone(reduction=...)` recompiles once per schedule. Its class states, as ClassVars:

- `placement`: where it runs, which decides the one protocol below it implements:
  - "mid" (MidReduction: ToMe, EViT, PiToMe, DToMe): after the attention residual, before the MLP,
      tokens = reduction.reduce(tokens, metrics, layer=i, depth=L)
    `metrics` holds "keys" (B, N, Dh), the keys averaged over heads, plus the attention scores the
    method lists in `scores` ("cls", "received"; see tokax.kernels.attention).
  - "pre" (PreReduction: MCTF's one-step-ahead attention): at the block input, with the block's own
    attention map,
      if reduction.attention_layer(layer=i, depth=L):
        tokens, probs = reduction.reduce_with_attention(tokens, probs, layer=i, depth=L)
    `probs` (B, H, N, N) are the softmax probabilities of this block on the unreduced tokens; the
    returned (B, H, N', N') map is used as this block's attention on the reduced tokens.
  - "end" (EndReduction: SiT's token slimming): after the MLP residual, through a Flax module that
    may hold parameters: `module = reduction.module(layer=i, depth=L)` (None where the layer keeps
    its tokens), then `tokens = module(tokens, deterministic=...)`.
  - "post" (PostReducer: DivPrune, ToDRE, DCT, FasterVLM): not a block hook; it acts on an encoder's
    output tokens, `reducer(tokens, metrics) -> Tokens`, metrics holding the scores it lists.
- `scores`: the attention scores it reads from `metrics` (a block method may narrow them per
  layer with `layer_scores(layer=, depth=)`).
- `strength_field`: the field that the short form "name:value" of tokax.reduction.build sets.
- `needs_calibration`: the registry entry builds a calibration spec, which
  tokax.reduction.calibrate_dtome-style functions turn into the method (DToMe).
- `variable_tokens`: the valid token count depends on the image; the model keeps the slots and
  marks the valid ones with Tokens.mask (DToMe), so token_counts are slot counts.

Token counts are static: a block method has `token_counts(num_tokens, depth, num_prefix)`, the
tokens after each block; a post reducer has `output_tokens(num_tokens, num_prefix)`.
Instance field `prop_attn` (block methods): add log(size) to every key's logit once tokens merged.
"""
from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import flax.linen as nn
import jax

from tokax.reduction.tokens import Tokens

Array = jax.Array

BLOCK_PLACEMENTS = ("pre", "mid", "end")
PLACEMENTS = BLOCK_PLACEMENTS + ("post",)


@runtime_checkable
class Method(Protocol):
  """What every registered method states about itself (class-level facts)."""
  placement: ClassVar[str]
  scores: ClassVar[tuple[str, ...]]
  strength_field: ClassVar[str]
  needs_calibration: ClassVar[bool]
  variable_tokens: ClassVar[bool]


@runtime_checkable
class MidReduction(Protocol):
  """placement "mid": between the attention residual and the MLP."""
  prop_attn: bool

  def reduce(self, tokens: Tokens, metrics: dict[str, Array], *, layer: int, depth: int) -> Tokens: ...

  def token_counts(self, num_tokens: int, depth: int, num_prefix: int = 1) -> tuple[int, ...]: ...


@runtime_checkable
class PreReduction(Protocol):
  """placement "pre": at the block input, with the block's own attention probabilities."""
  prop_attn: bool

  def attention_layer(self, *, layer: int, depth: int) -> bool: ...

  def reduce_with_attention(self, tokens: Tokens, probs: Array, *, layer: int,
                            depth: int) -> tuple[Tokens, Array]: ...

  def token_counts(self, num_tokens: int, depth: int, num_prefix: int = 1) -> tuple[int, ...]: ...


@runtime_checkable
class EndReduction(Protocol):
  """placement "end": after the MLP residual, through a module that may hold parameters."""
  prop_attn: bool

  def module(self, *, layer: int, depth: int) -> nn.Module | None: ...

  def token_counts(self, num_tokens: int, depth: int, num_prefix: int = 1) -> tuple[int, ...]: ...


@runtime_checkable
class PostReducer(Protocol):
  """placement "post": on an encoder's output tokens."""

  def __call__(self, tokens: Tokens, metrics: dict[str, Array] | None = None) -> Tokens: ...

  def output_tokens(self, num_tokens: int, num_prefix: int = 1) -> int: ...


PROTOCOLS: dict[str, type] = {"mid": MidReduction, "pre": PreReduction, "end": EndReduction, "post": PostReducer}


def check_block_reduction(reduction: Any, owner: str) -> None:
  """`reduction` is None or a block method implementing the protocol of its placement."""
  if reduction is None:
    return
  placement = getattr(reduction, "placement", None)
  name = type(reduction).__name__
  if placement == "post":
    raise ValueError(f"{owner}.reduction: {name} is a post-encoder reducer (placement 'post'); it acts on an "
                     "encoder's output, reducer(tokens, metrics), not inside the blocks")
  if placement not in BLOCK_PLACEMENTS:
    raise ValueError(f"{owner}.reduction: {name} has placement {placement!r}, not a block placement "
                     f"{BLOCK_PLACEMENTS}; build methods with tokax.reduction.build")
  if not isinstance(reduction, PROTOCOLS[placement]):
    raise ValueError(f"{owner}.reduction: {name} has placement {placement!r} but does not implement "
                     f"{PROTOCOLS[placement].__name__} (see tokax.reduction.base)")


def layer_scores(reduction: Any, *, layer: int, depth: int) -> tuple[str, ...]:
  """The attention scores block `layer` must produce for `reduction`.

  A method that needs scores only in some blocks defines `layer_scores(layer=, depth=)` (EViT: its
  pruning blocks), so the others can use kernels without score outputs (cuDNN flash attention);
  otherwise every block produces `reduction.scores`.
  """
  if hasattr(reduction, "layer_scores"):
    return tuple(reduction.layer_scores(layer=layer, depth=depth))
  return tuple(reduction.scores)
