"""Random selection as a post-encoder reducer: keep a uniformly random subset of the patch tokens.

The "random" baseline that DivPrune (Alvar et al., CVPR 2025) and FasterVLM (Zhang et al., arXiv
2412.01818) compare against; neither paper releases code for it. It keeps as many tokens as FasterVLM
at the same ratio, in original order, and drops the prefix tokens as FasterVLM does, so the two rows
differ only in which tokens are kept. The registry's "random" entry: `build("random:0.25")`.

Deliberate differences from a per-image torch.randperm:
- The subset is the top-k of uniform float32 scores, so ties (probability about (N - P)^2 / 2^24 per
  image) keep the lower index, as FasterVLM's selection does.
- The draws come from jax.random.key(seed) for the whole (B, N - P) batch: the subsets depend on
  (seed, batch shape) and on an image's position in the batch, and every call with the same batch
  shape draws the same subsets. Change `seed` for other draws.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import ClassVar

import jax
import jax.numpy as jnp

from tokax.reduction.evit import cls_select_plan
from tokax.reduction.tokens import Tokens, apply_plan

Array = jax.Array


def random_scores(seed: int, batch: int, num_patches: int) -> Array:
  """(batch, num_patches) float32 uniform [0, 1) draws from jax.random.key(seed); the top-k are kept."""
  return jax.random.uniform(jax.random.key(seed), (batch, num_patches), jnp.float32)


@dataclasses.dataclass(frozen=True)
class RandomSelect:
  """Random selection: a uniformly random `ratio` of the patch tokens per image, in original order.

  `RandomSelect(ratio=0.25)(tokens) -> Tokens`: tokens (B, N, C) with P prefix tokens in, (B, k, C)
  out with k = max(1, int((N - P) * ratio)) patch tokens (FasterVLM's count) in increasing original
  index, each image its own subset. The prefix tokens ([CLS], distillation) are dropped, as
  FasterVLM drops [CLS]. Reads no attention scores (`metrics` is ignored).

  Attributes:
    ratio: fraction of the patch tokens kept, in (0, 1]: max(1, int((N - P) * ratio)) tokens.
    seed: the draws come from jax.random.key(seed); an int in [0, 2**32).
  """
  placement: ClassVar[str] = "post"
  scores: ClassVar[tuple[str, ...]] = ()
  strength_field: ClassVar[str] = "ratio"
  needs_calibration: ClassVar[bool] = False
  variable_tokens: ClassVar[bool] = False

  ratio: float = 0.25
  seed: int = 0

  def __post_init__(self):
    ratio, seed = self.ratio, self.seed
    if (isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or math.isnan(float(ratio))
        or not 0.0 < float(ratio) <= 1.0):
      raise ValueError(f"RandomSelect.ratio: the fraction of patch tokens kept must be in (0, 1]; got {ratio!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**32:
      raise ValueError(f"RandomSelect.seed: an int in [0, 2**32) (jax.random.key's seed); got {seed!r}")
    object.__setattr__(self, "ratio", float(ratio))
    object.__setattr__(self, "seed", int(seed))

  def output_tokens(self, num_tokens: int, num_prefix: int = 1) -> int:
    """Tokens out for num_tokens in (the prefix is dropped)."""
    return max(1, int((num_tokens - num_prefix) * self.ratio))

  def __call__(self, tokens: Tokens, metrics: dict[str, Array] | None = None) -> Tokens:
    prefix = tokens.num_prefix
    uniform = random_scores(self.seed, tokens.x.shape[0], tokens.num_tokens - prefix)  # (B, N - P)
    scores = jnp.pad(uniform, ((0, 0), (prefix, 0)))  # (B, N): the prefix columns are never candidates
    plan = cls_select_plan(scores, self.output_tokens(tokens.num_tokens, prefix), num_prefix=prefix)
    return apply_plan(tokens, plan).replace(has_cls=False, has_dist=False)
