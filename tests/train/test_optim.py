"""The lr schedule in closed form, the weight-decay mask, the steps/epochs helper; the optimizers and layer-wise
lr decay against timm's (create_optimizer_v2, param_groups_layer_decay), and the checks of their config fields."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tokax.interop.timm import convert_state_dict, export_state_dict
from tokax.models import ViT
from tokax.train import optim
from tokax.train.config_utils import steps
from tokax.train.tasks import classifier


def test_lr_schedule_closed_form():
  peak, warmup, total = 1e-3, 10, 110
  schedule = optim.lr_schedule(peak_lr=peak, warmup_steps=warmup, total_steps=total)
  np.testing.assert_allclose(float(schedule(0)), 0.0)
  np.testing.assert_allclose(float(schedule(5)), peak * 5 / warmup, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(warmup)), peak, rtol=1e-6)  # warmup end: the peak
  for s in (35, 60, 97):
    expected = peak * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
    np.testing.assert_allclose(float(schedule(s)), expected, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(60)), peak / 2, rtol=1e-5)  # half way through the decay
  np.testing.assert_allclose(float(schedule(total)), 0.0, atol=1e-12)  # the end
  np.testing.assert_allclose(float(schedule(total + 50)), 0.0, atol=1e-12)


def test_lr_schedule_rejects_warmup_past_the_end():
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.lr_schedule(peak_lr=1.0, warmup_steps=20, total_steps=10)


def test_weight_decay_only_on_kernels():
  params = {"params": {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
                       "norm": {"scale": jnp.ones(2)}, "pos_embed": jnp.ones((1, 3, 2))}}
  mask = optim.decay_mask(params)
  assert mask == {"params": {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}, "pos_embed": False}}


def test_steps_from_steps_or_epochs():
  config = ml_collections.ConfigDict({"total_steps": None, "total_epochs": 2.5, "warmup_steps": 7})
  assert steps("total", config, num_examples=1000, batch_size=64) == math.ceil(2.5 * 1000 / 64)
  assert steps("warmup", config, num_examples=1000, batch_size=64) == 7
  assert steps("eval_every", config, num_examples=1000, batch_size=64, default=0) == 0
  config.total_steps = 3
  with pytest.raises(ValueError, match="only one of total_steps"):
    steps("total", config, num_examples=1000, batch_size=64)
  with pytest.raises(ValueError, match="set log_steps or log_epochs"):
    steps("log", config, num_examples=1000, batch_size=64)


# --- optimizer choice, layer-wise lr decay, validation (against timm / torch) -----------------------

@pytest.fixture(scope="module")
def timm():
  import importlib

  from torch_compat import import_timm

  module = import_timm()
  importlib.import_module("timm.optim")  # the optimizers and param groups (not imported by `import timm`)
  return module


def _timm_vit(timm, kind, device="cpu", **size):
  """A timm ViT of `kind` ("cls", "distilled" or "gap") at `size` (ViT-Ti/16 by default), random weights (none on
  the "meta" device: names and shapes only)."""
  import torch

  torch.manual_seed(0)
  fields = {**dict(img_size=32, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=10), **size}
  with torch.device(device):
    if kind == "distilled":
      return timm.models.deit.VisionTransformerDistilled(**fields)
    return timm.models.vision_transformer.VisionTransformer(global_pool="avg" if kind == "gap" else "token", **fields)


def _tokax_vit(kind, **size):
  return ViT(variant="Ti/16", num_classes=10, image_size=32, pool="gap" if kind == "gap" else "cls",
             distilled=kind == "distilled", **size)


def _abstract_params(model):
  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, model.image_size, model.image_size, 3)))


def _by_timm_name(tree):
  """{timm name: value} of a tree of scalars over a tokax ViT's parameters."""
  return {name: value.item() for name, value in export_state_dict(jax.tree.map(np.asarray, tree)).items()}


def _timm_groups(timm, model, layer_decay, weight_decay):
  """{name: (lr_scale, weight_decay)} of timm's param_groups_layer_decay as create_optimizer_v2 calls it."""
  groups = timm.optim.param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay,
                                    no_weight_decay_list=model.no_weight_decay())
  names = {id(p): name for name, p in model.named_parameters()}
  return {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}


@pytest.mark.parametrize("kind", ["cls", "distilled", "gap"])
def test_layer_decay_scales_and_decay_mask_match_timm_for_every_parameter(timm, kind):
  """ViT-Ti/16 (12 blocks): each parameter's lr scale and weight decay are those of timm's param groups."""
  decay, weight_decay = 0.65, 0.05
  want = _timm_groups(timm, _timm_vit(timm, kind, device="meta"), decay, weight_decay)
  params = _abstract_params(_tokax_vit(kind))
  scales = _by_timm_name(optim.layer_decay_scales(params, decay))
  decayed = _by_timm_name(optim.decay_mask(params))
  assert sorted(scales) == sorted(want)  # the same parameters under the interop name mapping
  for name, (lr_scale, wd) in want.items():
    assert scales[name] == lr_scale, (name, scales[name], lr_scale)
    assert decayed[name] == (wd != 0), (name, decayed[name], wd)
  # timm's layer ids: stem 0, blocks.i i + 1, the final norm with the last block, heads and fc_norm last
  assert scales["pos_embed"] == scales["cls_token"] == scales["patch_embed.proj.weight"] == decay ** 13
  assert scales["blocks.0.attn.qkv.weight"] == decay ** 12 and scales["blocks.11.mlp.fc2.bias"] == decay
  assert scales["head.weight"] == 1.0
  if kind == "gap":
    assert scales["fc_norm.weight"] == 1.0
  else:
    assert scales["norm.weight"] == decay


def _tiny_pair(timm):
  """A tiny timm ViT and its tokax twin's params (the same numbers), 2 blocks of width 8."""
  size = dict(embed_dim=8, depth=2, num_heads=2, mlp_ratio=2.0)
  model = _timm_vit(timm, "cls", **size)
  params = convert_state_dict({k: v.detach().numpy() for k, v in model.state_dict().items()})
  return model, jax.tree.map(lambda x: np.asarray(x, np.float32), params)


# (tokax name, options, timm --opt, options of timm's create_optimizer_v2)
TIMM_OPTIMIZERS = [
    ("adamw", {}, "adamw", {}),
    ("sgd", {"momentum": 0.9}, "sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.8, "nesterov": False}, "momentum", {"momentum": 0.8}),
    ("lamb", {"b1": 0.85, "b2": 0.98}, "lamb", {"betas": (0.85, 0.98)}),
    ("lion", {}, "lion", {}),  # its own default betas (0.9, 0.99)
]


@pytest.mark.parametrize("name, options, timm_name, timm_options", TIMM_OPTIMIZERS,
                         ids=[f"{t[0]}-{t[2]}-{i}" for i, t in enumerate(TIMM_OPTIMIZERS)])
def test_optimizers_with_layer_decay_match_timm(timm, name, options, timm_name, timm_options):
  """4 steps of optim.optimizer (warmup + cosine lr, weight decay 0.05, layer decay 0.75, grad clip 2.0) give the
  parameters of timm's create_optimizer_v2(model, opt, layer_decay=0.75) stepped as timm's train.py does (clip the
  gradients, set each group's lr to lr(step) * lr_scale as timm's scheduler does, step)."""
  import torch

  peak, weight_decay, layer_decay, clip, total = 0.05, 0.05, 0.75, 2.0, 6
  model, params = _tiny_pair(timm)
  schedule = optim.lr_schedule(peak_lr=peak, warmup_steps=2, total_steps=total)
  tx = optim.optimizer(name, schedule, weight_decay=weight_decay, grad_clip_norm=clip, layer_decay=layer_decay,
                       **options)
  reference = timm.optim.create_optimizer_v2(model, timm_name, lr=peak, weight_decay=weight_decay,
                                             layer_decay=layer_decay, **timm_options)
  update = jax.jit(tx.update)
  state = tx.init(params)
  rng = np.random.default_rng(0)
  torch_params = dict(model.named_parameters())
  for step in range(4):
    grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)  # global norm >> 1
    updates, state = update(grads, state, params)
    params = jax.tree.map(np.asarray, optax.apply_updates(params, updates))
    for key, grad in export_state_dict(grads).items():
      torch_params[key].grad = torch.from_numpy(np.ascontiguousarray(grad))
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    for group in reference.param_groups:
      group["lr"] = float(schedule(step)) * group["lr_scale"]
    reference.step()
    want = convert_state_dict({k: v.detach().numpy() for k, v in model.state_dict().items()})
    assert jax.tree.structure(params) == jax.tree.structure(want)
    for (path, got), expected in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(want)):
      np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6,
                                 err_msg=f"step {step + 1}: {jax.tree_util.keystr(path)}")


def test_default_adamw_is_todays_adamw_bit_for_bit():
  """optimizer("adamw") without layer decay: adamw()'s transforms, state tree and updates, bitwise."""
  params = {"params": {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3) / 7, "bias": jnp.ones(3)}}}
  schedule = optim.lr_schedule(peak_lr=1e-2, warmup_steps=1, total_steps=5)
  new = optim.optimizer("adamw", schedule, weight_decay=0.05, grad_clip_norm=1.0)
  old = optim.adamw(schedule, weight_decay=0.05, grad_clip_norm=1.0)
  new_state, old_state = new.init(params), old.init(params)
  assert jax.tree.structure(new_state) == jax.tree.structure(old_state)
  new_update, old_update = jax.jit(new.update), jax.jit(old.update)
  for step in range(3):
    grads = jax.tree.map(lambda p: jnp.sin(p * (step + 2)), params)
    new_updates, new_state = new_update(grads, new_state, params)
    old_updates, old_state = old_update(grads, old_state, params)
    jax.tree.map(np.testing.assert_array_equal, new_updates, old_updates)
    params = optax.apply_updates(params, new_updates)


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "adam", "config.optimizer='adam': expected one of 'adamw', 'sgd', 'lamb', 'lion'"),
    ("layer_decay", 0.0, r"config.layer_decay=0.0: expected a number in \(0, 1\]"),
    ("layer_decay", 1.5, r"config.layer_decay=1.5: expected a number in \(0, 1\]"),
    ("layer_decay", float("nan"), r"config.layer_decay=nan: expected a number in \(0, 1\]"),
    ("ema_decay", 1.0, r"config.ema_decay=1.0: expected a number in \[0, 1\)"),
    ("ema_decay", -0.1, r"config.ema_decay=-0.1: expected a number in \[0, 1\)"),
    ("momentum", 1.0, r"config.momentum=1.0: expected a number in \[0, 1\)"),
])
def test_optimizer_fields_are_checked(field, value, message):
  config = ml_collections.ConfigDict({"lr": 1e-3, "weight_decay": 0.05, "grad_clip_norm": 1.0, field: value})
  with pytest.raises(ValueError, match=message):
    classifier.check_optimizer_fields(config)
  if field != "ema_decay":  # the optimizer itself refuses them too
    with pytest.raises(ValueError, match=message):
      classifier.optimizer(config, total_steps=10, warmup_steps=1)
