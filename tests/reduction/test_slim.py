"""SiT token slimming equals the official TokenSlimmingModule / ReverseTSM (goldens in tests/golden),
follows the official LV-ViT schedule, and slims a tokax ViT at the stage ends with convex token
matrices; plus gradient, jit, degenerate-input, mask and validation checks."""
import functools
import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golden.weights import random_state_dict
from tokax.models import ViT
from tokax.reduction import EndReduction, Tokens, plan_matrix
from tokax.reduction.slim import (ReverseSlim, Slim, TokenSlimming, apply_slim, keep_schedule, slim_layers,
                                  slim_plan, slim_weights, soft_sizes)
from vit_testing import apply

_slim_weights = jax.jit(slim_weights)


def _load(name):
  from conftest import TESTS
  meta = json.loads((TESTS / "golden" / f"{name}.json").read_text())
  npz = TESTS / "golden" / f"{name}.npz"
  return meta, (dict(np.load(npz)) if npz.exists() else None)


@pytest.fixture(scope="module")
def modules_golden():
  return _load("sit_modules")


@pytest.fixture(scope="module")
def schedule_golden():
  return _load("sit_schedule")[0]


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _dense(state, prefix):
  return {"kernel": jnp.asarray(state[f"{prefix}.weight"].T), "bias": jnp.asarray(state[f"{prefix}.bias"])}


def _ln(state, prefix):
  return {"scale": jnp.asarray(state[f"{prefix}.weight"]), "bias": jnp.asarray(state[f"{prefix}.bias"])}


def _tsm_params(case):
  """tokax TokenSlimming params from the golden's weight recipe (alias names norm/fc1/fc2 = official
  weight.0/weight.1/weight.3, so a torch (out, in) weight is a transposed Dense kernel)."""
  drawn = random_state_dict({k: tuple(v) for k, v in case["weight_shapes"].items()}, case["weight_seed"])
  return {"norm": _ln(drawn, "norm"), "fc1": _dense(drawn, "fc1"), "fc2": _dense(drawn, "fc2"),
          "scale": jnp.full((1, 1, 1), case["scale"], jnp.float32)}


def _rtsm_params(case):
  s = random_state_dict({k: tuple(v) for k, v in case["weight_shapes"].items()}, case["weight_seed"])
  return {"norm1": _ln(s, "norm1"), "norm2": _ln(s, "norm2"), "mlp1_fc1": _dense(s, "mlp1.fc1"),
          "mlp1_fc2": _dense(s, "mlp1.fc2"), "mlp2_fc1": _dense(s, "mlp2.fc1"), "mlp2_fc2": _dense(s, "mlp2.fc2")}


def _official_grad(grads, torch_name):
  """tokax gradient leaf -> the official tensor layout (Dense kernels transposed)."""
  parts = torch_name.split(".")
  leaf = grads
  for p in parts[:-1]:
    leaf = leaf[p]
  g = np.asarray(leaf[parts[-1]])
  return g.T if parts[-1] == "kernel" else g


# TSM: tokax path -> official name
TSM_GRADS = {"norm.scale": "weight.0.weight", "norm.bias": "weight.0.bias", "fc1.kernel": "weight.1.weight",
             "fc1.bias": "weight.1.bias", "fc2.kernel": "weight.3.weight", "fc2.bias": "weight.3.bias",
             "scale": "scale"}
RTSM_GRADS = {f"{m}_{f}.{leaf}": f"{m}.{f}.{'weight' if leaf == 'kernel' else 'bias'}"
              for m in ("mlp1", "mlp2") for f in ("fc1", "fc2") for leaf in ("kernel", "bias")}
RTSM_GRADS.update({f"norm{i}.{leaf}": f"norm{i}.{'weight' if leaf == 'scale' else 'bias'}"
                   for i in (1, 2) for leaf in ("scale", "bias")})


# ------------------------------------------------------------------------------------------------
# Module parity with the official code.


def _tsm_case(meta, tag):
  return next(c for c in meta["tsm_cases"] if c["tag"] == tag)


@functools.partial(jax.jit, static_argnums=0)
def _tsm_apply(module, params, tokens):  # cases of equal shapes share one compile
  return module.apply({"params": params}, tokens, mutable=["intermediates"])


@pytest.mark.parametrize("tag", ["c64_n196", "c48_n49", "c30_n7", "duplicate", "zeros"])
@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_token_slimming_equals_official(modules_golden, tag, prefix):
  meta, data = modules_golden
  case = _tsm_case(meta, tag)
  params = _tsm_params(case)
  x = data[f"tsm_{tag}_x"]
  rng = np.random.default_rng(7)
  front = rng.standard_normal((x.shape[0], prefix, x.shape[2])).astype(np.float32)
  tokens = Tokens.create(jnp.asarray(np.concatenate([front, x], 1)), has_cls=prefix >= 1, has_dist=prefix == 2)
  out, state = _tsm_apply(TokenSlimming(num_out=case["keep"]), params, tokens)
  weights = state["intermediates"]["weights"][0]
  assert out.x.shape == (x.shape[0], prefix + case["keep"], x.shape[2]) and out.x.dtype == jnp.float32
  np.testing.assert_array_equal(out.x[:, :prefix], front)  # prefix tokens unchanged, in front
  assert _rel(out.x[:, prefix:], data[f"tsm_{tag}_out"]) <= 1e-5, _rel(out.x[:, prefix:], data[f"tsm_{tag}_out"])
  np.testing.assert_allclose(weights, data[f"tsm_{tag}_weights"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tag", ["c64_n196", "c48_n49", "c30_n7", "duplicate"])
def test_token_slimming_gradients_equal_official(modules_golden, tag):
  meta, data = modules_golden
  case = _tsm_case(meta, tag)
  params = _tsm_params(case)
  module = TokenSlimming(num_out=case["keep"])
  probe = jnp.asarray(data[f"tsm_{tag}_probe"])

  def loss(p, x):
    return (module.apply({"params": p}, Tokens.create(x, has_cls=False)).x * probe).sum()

  grads, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(data[f"tsm_{tag}_x"]))
  assert _rel(gx, data[f"tsm_{tag}_g_x"]) <= 1e-5
  for path, torch_name in TSM_GRADS.items():
    ours, theirs = _official_grad(grads, path), data[f"tsm_{tag}_g_{torch_name.replace('.', '__')}"]
    assert ours.shape == theirs.shape, path
    if path == "fc2.bias":
      # a bias on the logits shifts a whole column: the softmax over inputs ignores it, so the exact
      # gradient is 0 and both sides hold float32 rounding noise
      np.testing.assert_allclose(ours, 0.0, atol=1e-4)
      np.testing.assert_allclose(theirs, 0.0, atol=1e-4)
      continue
    if tag == "duplicate" and path in ("scale", "fc2.kernel", "fc2.bias", "fc1.kernel", "fc1.bias", "norm.scale",
                                       "norm.bias"):
      # every input is the same vector, so the output does not depend on W: the exact weight-net
      # gradient is 0 and both sides hold float32 rounding noise (up to ~2e-5 in torch)
      np.testing.assert_allclose(ours, 0.0, atol=1e-4)
      np.testing.assert_allclose(theirs, 0.0, atol=1e-4)
      continue
    assert _rel(ours, theirs) <= 2e-5, (path, _rel(ours, theirs))
  if tag != "duplicate":
    g_scale = float(np.asarray(grads["scale"]).reshape(()))
    assert abs(g_scale) > 1e-3 and g_scale == pytest.approx(float(case["grad_scale"]), rel=1e-4)


@pytest.mark.parametrize("tag", ["c64_98_196", "c48_12_49"])
def test_reverse_slim_equals_official(modules_golden, tag):
  meta, data = modules_golden
  case = next(c for c in meta["rtsm_cases"] if c["tag"] == tag)
  params = _rtsm_params(case)
  module = ReverseSlim(num_out=case["recovered"])
  x, probe = jnp.asarray(data[f"rtsm_{tag}_x"]), jnp.asarray(data[f"rtsm_{tag}_probe"])
  out = jax.jit(module.apply)({"params": params}, x)
  assert out.shape == (case["batch"], case["recovered"], case["channels"])
  assert _rel(out, data[f"rtsm_{tag}_out"]) <= 1e-5
  grads, gx = jax.jit(jax.grad(lambda p, v: (module.apply({"params": p}, v) * probe).sum(), argnums=(0, 1)))(params, x)
  assert _rel(gx, data[f"rtsm_{tag}_g_x"]) <= 2e-5
  stored = set(case["grads_stored"])
  checked = 0
  for path, torch_name in RTSM_GRADS.items():
    if torch_name in stored:
      assert _rel(_official_grad(grads, path), data[f"rtsm_{tag}_g_{torch_name.replace('.', '__')}"]) <= 2e-5, path
      checked += 1
  assert checked == len(stored) >= 8


# ------------------------------------------------------------------------------------------------
# Closed forms of the slimming weights, plan and sizes.


def test_weights_are_a_softmax_over_the_input_axis():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((2, 9, 4)).astype(np.float32)
  w = np.asarray(_slim_weights(jnp.asarray(logits), jnp.float32(2.5)))
  z = 2.5 * logits.astype(np.float64)
  expected = np.exp(z - z.max(1, keepdims=True))
  expected /= expected.sum(1, keepdims=True)  # normalised over the N INPUTS (axis 1), not the N' outputs
  np.testing.assert_allclose(w, expected, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
  assert not np.allclose(w.sum(2), 1.0)


@jax.jit
def _plan_and_slim(tokens, w):
  """The token matrix of slim_plan (one prefix token) and apply_slim's output."""
  return plan_matrix(slim_plan(w, num_prefix=1), tokens.size), apply_slim(tokens, w)


def test_plan_is_block_diagonal_with_convex_rows_and_matches_features():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 1 + 12, 6)).astype(np.float32)
  w = _slim_weights(jnp.asarray(rng.standard_normal((2, 12, 5)), jnp.float32), 1.3)
  tokens = Tokens.create(jnp.asarray(x)).replace(size=jnp.asarray(rng.integers(1, 4, (2, 13)), jnp.float32))
  t, out = _plan_and_slim(tokens, w)
  t = np.asarray(t, np.float64)
  assert t.shape == (2, 6, 13)
  np.testing.assert_array_equal(t[:, 0, 0], 1.0)
  assert not t[:, 0, 1:].any() and not t[:, 1:, 0].any()
  np.testing.assert_allclose(t[:, 1:, 1:], np.swapaxes(np.asarray(w), 1, 2), rtol=1e-7)
  assert (t >= 0).all()
  np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-6)  # every output a convex combination
  np.testing.assert_allclose(out.x, np.einsum("bmn,bnc->bmc", t, x.astype(np.float64)), rtol=1e-5, atol=1e-6)
  # sizes: every input's size spread over the outputs by its weights; the total is kept
  share = t / t.sum(1, keepdims=True)
  np.testing.assert_allclose(out.size, np.einsum("bmn,bn->bm", share, np.asarray(tokens.size)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out.size).sum(1), np.asarray(tokens.size).sum(1), rtol=1e-5)
  # assignment: every original token follows its input's largest weight
  np.testing.assert_array_equal(out.assign[:, 0], 0)
  np.testing.assert_array_equal(out.assign[:, 1:], 1 + np.argmax(np.asarray(w), axis=2))


def test_soft_sizes_reduce_to_group_counts_for_hard_plans():
  size = jnp.asarray([[1.0, 2.0, 3.0, 4.0, 5.0]])
  merge = jnp.asarray([[[0.2, 0.8, 0, 0, 0], [0, 0, 1.0, 0, 0], [0, 0, 0, 0.4, 0.6]]])  # 3 groups, all used
  np.testing.assert_allclose(soft_sizes(merge, size), [[3.0, 3.0, 9.0]])
  select = jnp.asarray([[[0, 0, 1.0, 0, 0], [0, 0, 0, 0, 1.0]]])  # dropped inputs count for nothing
  np.testing.assert_allclose(soft_sizes(select, size), [[3.0, 5.0]])


# ------------------------------------------------------------------------------------------------
# Schedule: the official LV-ViT variants.


@pytest.mark.parametrize("variant", ["sit_lvvit_tiny", "sit_lvvit_xsmall", "sit_lvvit_small", "sit_lvvit_medium",
                                     "sit_lvvit_large"])
def test_schedule_equals_official(schedule_golden, variant):
  v = schedule_golden["variants"][variant]
  slim = Slim(stage_blocks=tuple(v["stage_blocks"]))
  depth, n0 = v["depth"], v["num_patches"]
  assert slim_layers(slim.stage_blocks) == tuple(i - 1 for i in v["slim_index"])
  assert keep_schedule(n0, len(v["stage_blocks"]), slim.keeping_ratio) == tuple(v["keeped_patches"])
  assert slim.layer_counts(depth, n0) == tuple(v["layer_patches"][1:depth + 1])
  stages = [slim.stage_after(layer=i, depth=depth) for i in range(depth)]
  assert [s for s in stages if s is not None] == list(range(1, len(v["stage_blocks"])))
  assert [v["keeped_patches"][s] for s in stages if s is not None] == v["tsm_out_features"]
  assert v["tsm_hidden_features"] == [int(v["embed_dim"] * 0.5)] * len(v["tsm_out_features"])
  counts = slim.layer_counts(depth, n0)
  for layer, official in enumerate(v["rtsm_mlp1_in_hidden_out"]):
    reverse = slim.reverse_module(layer=layer, depth=depth, num_patches=n0)
    if official is None:
      assert reverse is None, layer
    else:
      assert isinstance(reverse, ReverseSlim) and reverse.num_out == official[2] == n0, layer
      assert counts[layer] == official[0] and int(n0 * reverse.ratio) == official[1], layer
  if "forward_layer_tokens" in v:
    assert tuple(v["forward_layer_tokens"]) == counts


# ------------------------------------------------------------------------------------------------
# In a tokax ViT.


class _Recorder:
  """Records (input, output) Tokens of every TokenSlimming call (nn.intercept_methods)."""

  def __init__(self):
    self.calls = []

  def __call__(self, next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, TokenSlimming) and context.method_name == "__call__":
      self.calls.append((context.module.scope.path, args[0], out))
    return out


@pytest.fixture(scope="module")
def slim_vit():
  """A depth-4 ViT slimming after blocks 0, 1, 2 on 64 x 64 images (16 patches -> 8 -> 4 -> 2), initialised."""
  model = ViT(variant="Ti/16", depth=4, num_classes=0, image_size=64, reduction=Slim(stage_blocks=(1, 1, 1, 1)))
  return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 64, 64, 3)))


def test_vit_slims_at_stage_ends_with_convex_token_matrices(slim_vit):
  model, variables = slim_vit
  images = jnp.asarray(np.random.default_rng(3).standard_normal((2, 64, 64, 3)), jnp.float32)
  params = variables["params"]
  assert [k for k in params if k.startswith("blocks_") and "slim" in params[k]] == ["blocks_0", "blocks_1", "blocks_2"]
  assert params["blocks_0"]["slim"]["fc2"]["kernel"].shape == (96, 8)  # C // 2 hidden
  assert params["blocks_2"]["slim"]["fc2"]["kernel"].shape == (96, 2)
  np.testing.assert_array_equal(params["blocks_0"]["slim"]["scale"], np.ones((1, 1, 1)))
  recorder = _Recorder()

  @jax.jit
  def run(v, im):
    recorder.calls.clear()
    with nn.intercept_methods(recorder):
      out = model.apply(v, im, return_intermediates=True, mutable=["intermediates"])
    return out, [(before, after) for _, before, after in recorder.calls]

  ((_, inter), state), calls = run(variables, images)
  paths = [path for path, _, _ in recorder.calls]
  np.testing.assert_array_equal(inter["num_tokens"], [1 + 8, 1 + 4, 1 + 2, 1 + 2])  # 16 -> 8 -> 4 -> 2
  assert paths == [("blocks_0", "slim"), ("blocks_1", "slim"), ("blocks_2", "slim")]
  for path, (before, after), n_in, n_out in zip(paths, calls, (16, 8, 4), (8, 4, 2)):
    w = np.asarray(state["intermediates"][path[0]]["slim"]["weights"][0], np.float64)  # (B, N, N')
    assert w.shape == (2, n_in, n_out)
    t = np.swapaxes(w, 1, 2)
    assert (t >= 0).all()
    np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-5)  # rows: convex combinations of the inputs
    xb, xa = np.asarray(before.x, np.float64), np.asarray(after.x, np.float64)
    np.testing.assert_array_equal(xa[:, 0], xb[:, 0])  # [CLS] untouched
    np.testing.assert_allclose(xa[:, 1:], np.einsum("bmn,bnc->bmc", t, xb[:, 1:]), rtol=1e-5,
                               atol=1e-5 * np.abs(xb).max())
    np.testing.assert_allclose(np.asarray(after.size).sum(1), 17.0, rtol=1e-5)  # sizes keep the total
  assign = np.asarray(inter["assign"])
  assert assign.shape == (2, 17) and (assign[:, 0] == 0).all() and ((assign[:, 1:] >= 1) & (assign[:, 1:] <= 2)).all()


def test_scale_gets_gradients_through_the_vit_and_jit_traces_once(slim_vit):
  model, variables = slim_vit
  params = variables["params"]
  rng = np.random.default_rng(4)
  images = jnp.asarray(rng.standard_normal((2, 64, 64, 3)), jnp.float32)
  probe = jnp.asarray(rng.standard_normal((2, 192)), jnp.float32)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def grad_fn(p, imgs):
    return jax.grad(lambda q: (model.apply({"params": q}, imgs) * probe).sum())(p)

  grads = grad_fn(params, images)
  grads = grad_fn(params, images + 0.5)
  assert set(grads["blocks_0"]["slim"]) == {"norm", "fc1", "fc2", "scale"} and "slim" not in grads["blocks_3"]
  g = float(np.asarray(grads["blocks_0"]["slim"]["scale"]).reshape(()))
  assert np.isfinite(g) and abs(g) > 0
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(grads))


@pytest.mark.parametrize("kind", ["constant", "zeros"])
def test_constant_images_give_no_nan(slim_vit, kind):
  model, variables = slim_vit
  images = jnp.full((2, 64, 64, 3), 0.3 if kind == "constant" else 0.0, jnp.float32)
  features, inter = apply(model, variables, images)  # one compile for both kinds
  assert np.isfinite(np.asarray(features)).all() and np.isfinite(np.asarray(inter["features"])).all()
  np.testing.assert_array_equal(inter["num_tokens"], [1 + 8, 1 + 4, 1 + 2, 1 + 2])
  np.testing.assert_allclose(np.asarray(inter["size"]).sum(1), 17.0, rtol=1e-5)


def test_distillation_token_is_protected_and_bf16_stays_bf16():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((2, 2 + 16, 8)), jnp.bfloat16)
  tokens = Tokens.create(x, has_cls=True, has_dist=True)
  module = TokenSlimming(stage=1)
  variables = jax.jit(module.init)(jax.random.key(0), tokens)
  out = jax.jit(module.apply)(variables, tokens)
  assert out.x.shape == (2, 2 + 8, 8) and out.x.dtype == jnp.bfloat16  # N0 = 16 from tokens.assign
  np.testing.assert_array_equal(np.asarray(out.x[:, :2], np.float32), np.asarray(x[:, :2], np.float32))
  assert np.isfinite(np.asarray(out.x, np.float32)).all()
  np.testing.assert_array_equal(out.assign[:, :2], [[0, 1], [0, 1]])


def test_masked_inputs_get_no_weight():
  rng = np.random.default_rng(6)
  logits = jnp.asarray(rng.standard_normal((2, 6, 3)), jnp.float32)
  mask = jnp.asarray([[True, False, True, True, False, True], [False] * 6])
  w = np.asarray(_slim_weights(logits, 1.0, mask))
  assert np.isfinite(w).all()
  assert not w[0, [1, 4]].any() and not w[1].any()  # an all-padding image gets all-zero weights, not NaN
  np.testing.assert_allclose(w[0].sum(0), 1.0, atol=1e-6)
  tokens = Tokens.create(jnp.asarray(rng.standard_normal((2, 6, 4)), jnp.float32), has_cls=False)
  out = jax.jit(apply_slim)(tokens.replace(mask=mask), jnp.asarray(w))
  np.testing.assert_array_equal(out.mask, [[True] * 3, [False] * 3])
  assert np.isfinite(np.asarray(out.x)).all() and np.isfinite(np.asarray(out.size)).all()


def test_keep_counts_clip_to_what_exists():
  tokens = Tokens.create(jnp.ones((1, 1 + 4, 8)))
  assert TokenSlimming(stage=3, keeping_ratio=0.1).resolve_num_out(tokens) == 1  # int(4 * 0.001) = 0 -> 1
  assert TokenSlimming(num_out=10).resolve_num_out(tokens) == 4  # more than the patch tokens -> all of them
  assert TokenSlimming(stage=1, num_patches=196).resolve_num_out(tokens) == 4
  assert Slim(stage_blocks=(1,) * 10).layer_counts(10, 196) == (98, 49, 24, 12, 6, 3, 1, 1, 1, 1)


# ------------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize("ratio", [0, 0.0, -0.5, 1.5, float("nan"), True, "0.5", None])
def test_invalid_keeping_ratio_raises(ratio):
  with pytest.raises(ValueError, match="Slim.keeping_ratio"):
    Slim(stage_blocks=(1, 1), keeping_ratio=ratio)
  with pytest.raises(ValueError, match="keeping_ratio"):
    keep_schedule(196, 4, ratio)


@pytest.mark.parametrize("blocks", [(), (1, 0, 2), (1, -1), (1.0, 2), "12", (True, 1)])
def test_invalid_stage_blocks_raise(blocks):
  with pytest.raises(ValueError, match="Slim.stage_blocks"):
    Slim(stage_blocks=blocks)


def test_no_stage_blocks_means_four_near_equal_stages_of_the_depth():
  assert Slim().stages(12) == (3, 3, 3, 3) and Slim().stages(6) == (2, 2, 1, 1) and Slim().stages(2) == (1, 1)
  with pytest.raises(ValueError, match="Slim.stage_blocks"):
    Slim(stage_blocks=(2, 2)).stages(12)


def test_stage_blocks_inconsistent_with_depth_raise_naming_the_field():
  model = ViT(variant="Ti/16", depth=3, num_classes=0, image_size=32, reduction=Slim(stage_blocks=(1, 1, 1, 13)))
  with pytest.raises(ValueError, match=r"Slim.stage_blocks: \(1, 1, 1, 13\) has 16 blocks but the model has depth 3"):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="Slim.stage_blocks"):
    Slim(stage_blocks=[2, 2]).module(layer=0, depth=5)


def test_other_field_validation_and_protocol():
  assert Slim(stage_blocks=[2, 2]).stage_blocks == (2, 2)  # lists are normalised (hashable)
  hash(Slim(stage_blocks=(2, 2)))
  for bad in (0, -3, 1.5, True):
    with pytest.raises(ValueError, match="Slim.num_patches"):
      Slim(stage_blocks=(1, 1), num_patches=bad)
  with pytest.raises(ValueError, match="Slim.hidden_ratio"):
    Slim(stage_blocks=(1, 1), hidden_ratio=0)
  with pytest.raises(ValueError, match="TokenSlimming.num_out"):
    jax.eval_shape(TokenSlimming(num_out=0).init, jax.random.key(0), Tokens.create(jnp.ones((1, 5, 4))))
  slim = Slim(stage_blocks=(1, 1))
  assert (slim.placement, slim.scores, slim.prop_attn) == ("end", (), False)
  assert slim.module(layer=1, depth=2) is None
  assert isinstance(slim, EndReduction) and not hasattr(slim, "reduce")  # the block calls module()
