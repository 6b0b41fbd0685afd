"""Learning-rate schedule, optimizers, layer-wise lr decay and the weight EMA of the training runs.

  lr_schedule       linear warmup, then cosine decay
  optimizer(name)   "adamw" (the default), "sgd", "lamb", "lion" (timm's --opt of the same name), after
                    clipping the global gradient norm; weight decay on the kernels only (decay_mask);
                    layer_decay < 1 scales each layer's lr as timm's param_groups_layer_decay
  ema_update        timm's ModelEmaV2 step: decay * ema + (1 - decay) * params

Every optimizer is optax's own (optax.adamw / sgd / lion) but LAMB: optax.lamb scales every parameter by its
trust ratio and clips nothing, so "lamb" chains optax's transforms as timm's Lamb computes (eps 1e-6, its own
global-norm clip at 1.0, no trust ratio on the parameters without weight decay). Deliberate differences
from timm (docs/optimizers.md has the full correspondence):
  - Layer ids extend timm's ViT group_matcher with T2T-ViT's tokens_to_token (stem, layer 0); anything
    else it does not name (SiT's reverse modules) is trained at the full lr, as timm's head.
  - No ModelEmaV3 warmup: the EMA decays with the constant `ema_decay` from step 1 (DeiT's model-ema).
"""
from __future__ import annotations

import math
import re
from typing import Any

import jax
import optax

from tokax.train.sharding import path_string

OPTIMIZERS = ("adamw", "sgd", "lamb", "lion")
# (b1, b2) and eps of each optimizer when the config leaves them unset: timm's / optax's defaults.
DEFAULT_BETAS = {"adamw": (0.9, 0.999), "lamb": (0.9, 0.999), "lion": (0.9, 0.99)}
DEFAULT_EPS = {"adamw": 1e-8, "lamb": 1e-6}
LAMB_MAX_GRAD_NORM = 1.0  # timm's Lamb(max_grad_norm=1.0): a global-norm clip inside the optimizer


def lr_schedule(*, peak_lr: float, warmup_steps: int, total_steps: int, end_lr: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 to `peak_lr` over `warmup_steps`, then cosine decay to `end_lr` at `total_steps`.

  lr(s) = peak_lr * s / warmup_steps for s < warmup_steps, and
  lr(s) = end_lr + (peak_lr - end_lr) * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps))) / 2
  after; constant at end_lr from total_steps on.
  """
  if not 0 <= warmup_steps <= total_steps:
    raise ValueError(f"lr_schedule: need 0 <= warmup_steps <= total_steps; got {warmup_steps}, {total_steps}")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=end_lr)


def decay_mask(params):
  """True for the leaves that get weight decay: the matmul and conv kernels (big_vision's default).

  For a ViT this is timm's rule (no decay on 1-D parameters and on pos_embed, cls_token, reg_token,
  dist_token): every other parameter of tokax's ViT is a kernel.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def adamw(schedule: optax.Schedule, *, weight_decay: float, grad_clip_norm: float | None,
          b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """AdamW with decoupled weight decay on kernels only, after clipping the global gradient norm."""
  clip = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
  return optax.chain(
      *clip, optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask))


def check_fields(*, optimizer: str = "adamw", layer_decay: float = 1.0, ema_decay: float = 0.0,
                 momentum: float = 0.9, b1: float | None = None, b2: float | None = None) -> None:
  """Refuses optimizer / EMA settings no run can use, naming the config field and the values it takes."""
  def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

  if optimizer not in OPTIMIZERS:
    raise ValueError(f"config.optimizer={optimizer!r}: expected one of {', '.join(map(repr, OPTIMIZERS))}")
  if not (number(layer_decay) and 0 < layer_decay <= 1):
    raise ValueError(f"config.layer_decay={layer_decay!r}: expected a number in (0, 1] (1: every layer at the "
                     f"full lr; 0.65 / 0.75 as BEiT / MAE fine-tuning)")
  if not (number(ema_decay) and 0 <= ema_decay < 1):
    raise ValueError(f"config.ema_decay={ema_decay!r}: expected a number in [0, 1) (0: no EMA; 0.99996 as DeiT's "
                     f"model-ema)")
  for name, value in (("momentum", momentum), ("b1", b1), ("b2", b2)):
    if value is not None and not (number(value) and 0 <= value < 1):
      raise ValueError(f"config.{name}={value!r}: expected a number in [0, 1)")


def optimizer(name: str, schedule: optax.Schedule, *, weight_decay: float, grad_clip_norm: float | None,
              b1: float | None = None, b2: float | None = None, momentum: float = 0.9, nesterov: bool = True,
              layer_decay: float = 1.0) -> optax.GradientTransformation:
  """The optimizer `name` at the lr of `schedule`, after clipping the global gradient norm at grad_clip_norm.

  Weight decay applies to decay_mask's leaves (the kernels). timm's optimizer of the same name:
    "adamw": optax.adamw, decoupled decay (p -= lr * wd * p); betas default (0.9, 0.999), eps 1e-8;
      with layer_decay 1 the same transforms and state as adamw().
    "sgd": torch's SGD (timm's --opt sgd: nesterov; nesterov=False is timm's "momentum"): L2 decay added
      to the gradient, then optax.sgd's momentum trace.
    "lamb": timm's Lamb: global-norm clip at 1.0, Adam moments (eps 1e-6), L2 decay added to the update,
      the trust ratio ||p|| / ||update|| on the decayed leaves (none when weight_decay is 0).
    "lion": optax.lion (timm's Lion): betas default (0.9, 0.99), decoupled decay.
  layer_decay < 1 multiplies each leaf's update (so its lr, weight decay included, as timm's per-group lr)
  by layer_decay_scales.

  Raises:
    ValueError naming config.optimizer / layer_decay / momentum / b1 / b2 for values no run can use.
  """
  check_fields(optimizer=name, layer_decay=layer_decay, momentum=momentum, b1=b1, b2=b2)
  clip = [optax.clip_by_global_norm(grad_clip_norm)] if grad_clip_norm else []
  default_b1, default_b2 = DEFAULT_BETAS.get(name, (None, None))
  b1, b2 = default_b1 if b1 is None else b1, default_b2 if b2 is None else b2
  decay = [optax.add_decayed_weights(weight_decay, mask=decay_mask)] if weight_decay else []
  if name == "adamw":  # chain(*clip, base) is adamw(): the same transforms and state
    base = optax.adamw(schedule, b1=b1, b2=b2, eps=DEFAULT_EPS["adamw"], weight_decay=weight_decay, mask=decay_mask)
  elif name == "sgd":
    base = optax.chain(*decay, optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov))
  elif name == "lamb":
    trust = [optax.masked(optax.scale_by_trust_ratio(), decay_mask)] if weight_decay else []
    base = optax.chain(optax.clip_by_global_norm(LAMB_MAX_GRAD_NORM),
                       optax.scale_by_adam(b1=b1, b2=b2, eps=DEFAULT_EPS["lamb"]), *decay, *trust,
                       optax.scale_by_learning_rate(schedule))
  else:
    base = optax.lion(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
  layers = [scale_by_layer_decay(layer_decay)] if layer_decay != 1 else []
  return optax.chain(*clip, base, *layers)


# --- layer-wise lr decay --------------------------------------------------------------------------

# timm's VisionTransformer.group_matcher(coarse=False) on tokax's parameter paths (the "params" collection
# left out): the stem, each block, the final norm joining the last block; whatever is unnamed (the heads,
# fc_norm) comes last. tokens_to_token is T2T-ViT's stem.
_STEM = re.compile(r"^(cls_token|dist_token|reg_token|pos_embed|patch_embed|norm_pre|tokens_to_token)(/|$)")
_BLOCK = re.compile(r"^blocks_(\d+)/")
_FINAL_NORM = re.compile(r"^norm/")
_JOINS_PREVIOUS = 99999.0  # timm's MATCH_PREV_GROUP


def _group_key(path: str) -> tuple[float, ...]:
  """timm's group ordinal of one parameter path (group_with_matcher's _get_grouping)."""
  if _STEM.match(path):
    return (0.0,)
  block = _BLOCK.match(path)
  if block:
    return (1.0, float(block[1]))
  if _FINAL_NORM.match(path):
    return (1.0, _JOINS_PREVIOUS)
  return (math.inf,)


def layer_ids(params: Any) -> Any:
  """Each leaf's layer id as timm's param_groups_layer_decay assigns it for a ViT (same tree, int leaves).

  Stem (patch_embed, cls_token, dist_token, pos_embed) 0, blocks_i i + 1, the final norm with the last
  block (depth), the heads and fc_norm depth + 1: timm sorts the group_matcher ordinals and numbers them
  0, 1, ... (so a model without a head has depth + 1 layers). A leading "params" collection is skipped.
  """
  def relative(path) -> str:
    text = path_string(path)
    return text[len("params/"):] if text.startswith("params/") else text

  keys = jax.tree_util.tree_map_with_path(lambda path, _: _group_key(relative(path)), params)
  key_leaves = jax.tree.leaves(keys, is_leaf=lambda x: isinstance(x, tuple))
  ids, layer = {}, -1
  for key in sorted(set(key_leaves)):
    if layer < 0 or key[-1] != _JOINS_PREVIOUS:
      layer += 1
    ids[key] = layer
  return jax.tree.map(lambda key: ids[key], keys, is_leaf=lambda x: isinstance(x, tuple))


def layer_decay_scales(params: Any, layer_decay: float) -> Any:
  """Each leaf's lr factor layer_decay ** (num_layers - 1 - layer id) (timm's lr_scale), float leaves."""
  ids = layer_ids(params)
  top = max(jax.tree.leaves(ids))
  return jax.tree.map(lambda i: layer_decay ** (top - i), ids)


def scale_by_layer_decay(layer_decay: float) -> optax.GradientTransformation:
  """Multiplies each leaf's update by its layer_decay_scales factor (stateless; read off the tree's paths)."""
  def scale(updates, params):
    del params
    return jax.tree.map(lambda u, s: u * s, updates, layer_decay_scales(updates, layer_decay))

  return optax.stateless(scale)


# --- weight EMA -----------------------------------------------------------------------------------

def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """One step of the weight EMA, timm's ModelEmaV2: decay * ema + (1 - decay) * params, leaf by leaf.

  decay 0 returns `params` (no average kept).
  """
  if not decay:
    return params
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
