"""SiT: the Token Slimming Module, a learned many-to-many reduction (Zong et al., ECCV 2022).

Equal to Sense-X/SiT `models/lvvit.py` at f577808 (`TokenSlimmingModule`, L254-269, and
`ReverseTSM`, L238-251) on the same weights and inputs.
After the last block of every stage but the last, the patch tokens X (B, N, C) are replaced by

    W = softmax(scale * MLP(LN(X)), axis=1)      (B, N, N')  normalised over the N INPUT tokens
    X' = W^T X                                   (B, N', C)  every slimmed token a convex combination

with MLP = Dense(C // 2) -> exact GELU -> Dense(N') and a learned scalar `scale` (init 1). Prefix
tokens ([CLS], distillation) are split off before and re-attached in front, unchanged. As a plan
this is a DensePlan with the block-diagonal matrix [I_P, W^T] (rows sum to one). Stage s (1-based)
keeps N'_s = int(N0 * keeping_ratio ** s) patch tokens (196 -> 98 -> 49 -> 24 for 224/16). The
reverse module (ReverseSlim, official ReverseTSM) maps slimmed tokens back to N0 tokens for the
feature-recalibration distillation loss; it exists only in training.

Deliberate differences from the official code, none of which changes a result on valid inputs:
- Only LV-ViT is released (fp32 attention, residuals x + f(x) / skip_lam, conv stem); tokax slims
  its plain ViT/DeiT. Parity is therefore at the module level (the two modules above).
- Sizes: a slimmed token's size is the share of original patches it holds, every input's size
  spread over the outputs in proportion to its weights (tokax.reduction.tokens.soft_sizes); sizes still sum to N0. The
  shared DensePlan rule (count of inputs with a nonzero weight) would give every slimmed token
  the size of all inputs. The official code keeps no sizes.
- Keep counts are clipped to [1, patch tokens present]: the official code would build a Linear
  with zero outputs once int(N0 * ratio ** s) reaches 0 (many stages or a small ratio).
- Masked (padding) inputs, which the official code never sees, get weight 0.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokax.reduction.tokens import DensePlan, Tokens, apply_plan, soft_sizes  # noqa: F401  (re-exported)

Array = jax.Array
Dtype = Any
TORCH_LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, used by both official modules


def check_keeping_ratio(value: Any, field: str = "keeping_ratio") -> float:
  """A fraction in (0, 1]: the share of patch tokens each stage keeps."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value))
      or not 0.0 < float(value) <= 1.0):
    raise ValueError(f"{field}: the fraction of patch tokens each stage keeps must be in (0, 1] "
                     f"(SiT uses 0.5); got {value!r}")
  return float(value)


def check_stage_blocks(value: Any, field: str = "stage_blocks") -> tuple[int, ...]:
  """A non-empty sequence of positive block counts, one per stage."""
  blocks = tuple(value) if isinstance(value, (tuple, list)) else ()
  if not blocks or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in blocks):
    raise ValueError(f"{field}: expected a non-empty tuple of positive ints, the blocks of each stage (SiT-XS: "
                     f"(1, 1, 1, 13)); got {value!r}")
  return tuple(int(b) for b in blocks)


def keep_schedule(num_patches: int, num_stages: int, keeping_ratio: float = 0.5) -> tuple[int, ...]:
  """Patch tokens per stage, official `keeped_patches`: int(N0 * keeping_ratio ** s) for s < num_stages.

  (196, 4, 0.5) -> (196, 98, 49, 24). Entry 0 is the unslimmed N0. Not clipped (see `slim_count`).
  """
  ratio = check_keeping_ratio(keeping_ratio)
  return tuple(int(num_patches * ratio ** s) for s in range(num_stages))


def slim_count(num_patches: int, stage: int, keeping_ratio: float, available: int) -> int:
  """N' of stage `stage` (1-based), int(N0 * ratio ** stage), clipped to [1, available]."""
  if available < 1:
    raise ValueError(f"TokenSlimming: no patch tokens to slim (got {available} after the prefix)")
  return min(available, max(1, int(num_patches * check_keeping_ratio(keeping_ratio) ** stage)))


def default_stages(depth: int) -> tuple[int, ...]:
  """Four stages of (nearly) equal length summing to `depth` (fewer if depth < 4): 12 -> (3, 3, 3, 3)."""
  stages = min(4, depth)
  base, extra = divmod(depth, stages)
  return tuple(base + (i < extra) for i in range(stages))


def slim_layers(stage_blocks: Sequence[int]) -> tuple[int, ...]:
  """0-based blocks after which a stage ends and tokens are slimmed: cumsum(stage_blocks)[:-1] - 1.

  (9, 3, 2, 2) -> (8, 11, 13): the official `(i + 1) in slim_index` with slim_index = (9, 12, 14).
  """
  ends = np.cumsum(check_stage_blocks(stage_blocks))[:-1]
  return tuple(int(e) - 1 for e in ends)


def slim_weights(logits: Array, scale: Array, mask: Array | None = None) -> Array:
  """SiT's slimming weights: softmax over the INPUT tokens of the scaled logits.

  Args:
    logits: (B, N, N') weight-net outputs, one column per slimmed token.
    scale: scalar (or (1, 1, 1)) learned temperature.
    mask: (B, N) bool valid inputs, or None; invalid inputs get weight 0 (all invalid: all 0).

  Returns:
    W (B, N, N') float32, every column summing to 1 over the valid inputs.
  """
  z = logits.astype(jnp.float32) * jnp.asarray(scale, jnp.float32).reshape(())
  if mask is None:
    return jax.nn.softmax(z, axis=1)
  valid = mask[:, :, None]
  w = jax.nn.softmax(jnp.where(valid, z, jnp.finfo(jnp.float32).min), axis=1)
  return jnp.where(valid, w, 0.0)


def slim_plan(weights: Array, num_prefix: int = 0) -> DensePlan:
  """The slimming as a DensePlan over [prefix tokens, N patch tokens].

  Args:
    weights: W (B, N, N') from slim_weights.
    num_prefix: leading tokens ([CLS], distillation) passed through unchanged, in front.

  Returns:
    DensePlan with float32 matrix (B, P + N', P + N) = block-diag [I_P, W^T].
  """
  if num_prefix < 0:
    raise ValueError(f"num_prefix: must be >= 0; got {num_prefix}")
  t = jnp.swapaxes(weights.astype(jnp.float32), 1, 2)  # (B, N', N)
  batch, n_out, n_in = t.shape
  p = num_prefix
  top = jnp.concatenate([jnp.broadcast_to(jnp.eye(p, dtype=jnp.float32), (batch, p, p)),
                         jnp.zeros((batch, p, n_in), jnp.float32)], axis=2)
  bottom = jnp.concatenate([jnp.zeros((batch, n_out, p), jnp.float32), t], axis=2)
  return DensePlan(matrix=jnp.concatenate([top, bottom], axis=1), sizes="mass")


def apply_slim(tokens: Tokens, weights: Array) -> Tokens:
  """Slim the patch tokens with W (B, N, N') (prefix kept in front): x, size, assign and mask move together.

  Features X' = W^T X (float32, HIGHEST precision, cast back to x.dtype) and the assignment (every
  original token follows its input's largest weight) and sizes (spread by weight, DensePlan sizes='mass') come from apply_plan.
  """
  return apply_plan(tokens, slim_plan(weights, tokens.num_prefix))


class TokenSlimming(nn.Module):
  """SiT's Token Slimming Module (official TokenSlimmingModule) on a Tokens state.

  Parameters: norm (LayerNorm, eps 1e-5), fc1 (C -> int(C * hidden_ratio)), fc2 (-> N'), scale
  (1, 1, 1) init 1. The weights W (B, N, N') are sown as intermediates "weights".

  Attributes:
    num_out: N' slimmed patch tokens, or None for SiT's schedule int(N0 * keeping_ratio ** stage).
    stage: the stage that starts after this module (1 for the first slimming).
    keeping_ratio: share of patch tokens each stage keeps.
    num_patches: N0 of the schedule, or None for the original patch tokens of the state
      (tokens.assign has N0 + prefix columns).
    hidden_ratio: weight-net hidden width over C (official ratio=0.5).
    epsilon: LayerNorm epsilon (torch's default 1e-5, as the official module).
  """
  num_out: int | None = None
  stage: int = 1
  keeping_ratio: float = 0.5
  num_patches: int | None = None
  hidden_ratio: float = 0.5
  epsilon: float = TORCH_LAYER_NORM_EPS
  param_dtype: Dtype = jnp.float32

  def resolve_num_out(self, tokens: Tokens) -> int:
    """Static N' for this state, clipped to [1, patch tokens present]."""
    available = tokens.num_tokens - tokens.num_prefix
    if self.num_out is not None:
      if isinstance(self.num_out, bool) or not isinstance(self.num_out, (int, np.integer)) or self.num_out < 1:
        raise ValueError(f"TokenSlimming.num_out: expected a positive int or None; got {self.num_out!r}")
      return slim_count(int(self.num_out), 0, 1.0, available)
    n0 = tokens.assign.shape[1] - tokens.num_prefix if self.num_patches is None else self.num_patches
    return slim_count(n0, self.stage, self.keeping_ratio, available)

  @nn.compact
  def __call__(self, tokens: Tokens, deterministic: bool = True) -> Tokens:
    """tokens x (B, P + N, C) -> (B, P + N', C); deterministic is unused (no dropout)."""
    del deterministic
    num_out = self.resolve_num_out(tokens)
    width = tokens.x.shape[-1]
    hidden = int(width * self.hidden_ratio)
    if hidden < 1:
      raise ValueError(f"TokenSlimming.hidden_ratio: int({width} * {self.hidden_ratio}) = {hidden} hidden units; "
                       "it must be at least 1")
    patches = tokens.x[:, tokens.num_prefix:]
    h = nn.LayerNorm(epsilon=self.epsilon, use_fast_variance=False, param_dtype=self.param_dtype, name="norm")(patches)
    h = nn.Dense(hidden, param_dtype=self.param_dtype, name="fc1")(h)
    h = nn.gelu(h, approximate=False)
    logits = nn.Dense(num_out, param_dtype=self.param_dtype, name="fc2")(h)  # (B, N, N')
    scale = self.param("scale", nn.initializers.ones, (1, 1, 1), self.param_dtype)
    mask = None if tokens.mask is None else tokens.mask[:, tokens.num_prefix:]
    weights = slim_weights(logits, scale, mask)
    self.sow("intermediates", "weights", weights)
    return apply_slim(tokens, weights)


class ReverseSlim(nn.Module):
  """SiT's reverse token slimming (official ReverseTSM), training only: N' tokens back to N0.

      y = LN1(x); y = token-MLP(y over the token axis: N' -> int(N0 * ratio) -> N0, GELU)
      y = y + channel-MLP(LN2(y)) (C -> int(C * ratio) -> C, GELU)

  No residual around the token MLP. Parameters: norm1, mlp1_fc1, mlp1_fc2, norm2, mlp2_fc1, mlp2_fc2.

  Attributes:
    num_out: N0 recovered tokens.
    ratio: hidden expansion of both MLPs (official 4).
    epsilon: LayerNorm epsilon (torch's default 1e-5).
  """
  num_out: int
  ratio: float = 4.0
  epsilon: float = TORCH_LAYER_NORM_EPS
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    """x: (B, N', C) patch tokens -> (B, N0, C); deterministic is unused (no dropout)."""
    del deterministic
    if isinstance(self.num_out, bool) or not isinstance(self.num_out, (int, np.integer)) or self.num_out < 1:
      raise ValueError(f"ReverseSlim.num_out: expected the positive number of recovered tokens N0; got "
                       f"{self.num_out!r}")
    if not self.ratio > 0:
      raise ValueError(f"ReverseSlim.ratio: the MLP expansion must be > 0; got {self.ratio!r}")
    width = x.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=self.epsilon, use_fast_variance=False, param_dtype=self.param_dtype,
                                     name=name)
    dense = lambda feats, name: nn.Dense(feats, param_dtype=self.param_dtype, name=name)
    y = jnp.swapaxes(norm("norm1")(x), 1, 2)  # (B, C, N')
    y = dense(self.num_out, "mlp1_fc2")(nn.gelu(dense(int(self.num_out * self.ratio), "mlp1_fc1")(y),
                                                approximate=False))
    y = jnp.swapaxes(y, 1, 2)  # (B, N0, C)
    h = dense(width, "mlp2_fc2")(nn.gelu(dense(int(width * self.ratio), "mlp2_fc1")(norm("norm2")(y)),
                                         approximate=False))
    return y + h


@dataclasses.dataclass(frozen=True)
class Slim:
  """SiT token slimming as a ViT reduction: placement "end" (after the MLP residual) at stage ends.

  `module(layer=i, depth=L)` returns the TokenSlimming module (named "slim", a child of the
  calling block) for the last block of every stage but the last, else None. Its parameters live
  in the block: params["blocks_i"]["slim"].

  Attributes:
    stage_blocks: blocks per stage; they must sum to the depth. SiT-T (1, 1, 1, 11), SiT-XS
      (1, 1, 1, 13), SiT-S (9, 3, 2, 2), SiT-M (10, 4, 3, 3), SiT-L (10, 4, 3, 7). None (default):
      four stages of near-equal length summing to the model's depth, default_stages(depth).
    keeping_ratio: stage s keeps int(N0 * keeping_ratio ** s) patch tokens (official 0.5).
    num_patches: N0 of that schedule, or None for the model's original patch-token count.
    hidden_ratio: weight-net hidden width over C (official 0.5).
  """
  placement: ClassVar[str] = "end"
  scores: ClassVar[tuple[str, ...]] = ()
  strength_field: ClassVar[str] = "keeping_ratio"
  needs_calibration: ClassVar[bool] = False
  variable_tokens: ClassVar[bool] = False
  prop_attn: ClassVar[bool] = False  # slimmed tokens carry soft sizes; SiT's attention does not use them

  stage_blocks: tuple[int, ...] | None = None
  keeping_ratio: float = 0.5
  num_patches: int | None = None
  hidden_ratio: float = 0.5

  def __post_init__(self):
    if self.stage_blocks is not None:
      object.__setattr__(self, "stage_blocks", check_stage_blocks(self.stage_blocks, "Slim.stage_blocks"))
    object.__setattr__(self, "keeping_ratio", check_keeping_ratio(self.keeping_ratio, "Slim.keeping_ratio"))
    if self.num_patches is not None and (isinstance(self.num_patches, bool)
                                         or not isinstance(self.num_patches, (int, np.integer))
                                         or self.num_patches < 1):
      raise ValueError(f"Slim.num_patches: expected a positive int (N0) or None to use the model's patch "
                       f"count; got {self.num_patches!r}")
    if (isinstance(self.hidden_ratio, bool) or not isinstance(self.hidden_ratio, numbers.Real)
        or not float(self.hidden_ratio) > 0):
      raise ValueError(f"Slim.hidden_ratio: the weight-net width over C must be > 0 (official 0.5); got "
                       f"{self.hidden_ratio!r}")

  def stages(self, depth: int) -> tuple[int, ...]:
    """Blocks per stage in a depth-`depth` model: stage_blocks, or default_stages(depth) for None."""
    if self.stage_blocks is None:
      return default_stages(depth)
    total = sum(self.stage_blocks)
    if total != depth:
      raise ValueError(f"Slim.stage_blocks: {self.stage_blocks} has {total} blocks but the model has depth {depth}; "
                       f"the stage lengths must add up to the depth (e.g. {(depth,)} for no slimming), or pass "
                       "None for four near-equal stages")
    return self.stage_blocks

  def check_depth(self, depth: int) -> None:
    self.stages(depth)

  def stage_after(self, *, layer: int, depth: int) -> int | None:
    """The stage (1-based) that starts after block `layer`, if the block ends a stage (not the last); else None."""
    stages = self.stages(depth)
    if not 0 <= layer < depth:
      raise ValueError(f"Slim: layer {layer} is outside a model of depth {depth}")
    layers = slim_layers(stages)
    return layers.index(layer) + 1 if layer in layers else None

  def layer_counts(self, depth: int, num_patches: int) -> tuple[int, ...]:
    """Patch tokens after each block (the official layer_patches[1:]), with tokax's clip to >= 1."""
    counts, n = [], num_patches
    for layer in range(depth):
      stage = self.stage_after(layer=layer, depth=depth)
      if stage is not None:
        n = slim_count(self.num_patches or num_patches, stage, self.keeping_ratio, n)
      counts.append(n)
    return tuple(counts)

  def token_counts(self, num_tokens: int, depth: int, num_prefix: int = 1) -> tuple[int, ...]:
    """(depth,) tokens after each block (prefix included) for N = num_tokens input tokens."""
    return tuple(num_prefix + n for n in self.layer_counts(depth, num_tokens - num_prefix))

  def module(self, *, layer: int, depth: int, name: str = "slim") -> TokenSlimming | None:
    """The slimming module after block `layer`, or None. Call it inside the block's compact method."""
    stage = self.stage_after(layer=layer, depth=depth)
    if stage is None:
      return None
    return TokenSlimming(stage=stage, keeping_ratio=self.keeping_ratio, num_patches=self.num_patches,
                         hidden_ratio=self.hidden_ratio, name=name)

  def reverse_module(self, *, layer: int, depth: int, num_patches: int, name: str | None = None
                     ) -> ReverseSlim | None:
    """Training only: ReverseSlim for block `layer` once tokens have been dropped (official rtsm[i]), else None."""
    if self.layer_counts(depth, num_patches)[layer] >= num_patches:
      return None
    return ReverseSlim(num_out=num_patches, name=name)
