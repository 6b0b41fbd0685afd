"""EViT equals the official youweiliang/evit model and block (goldens in tests/golden), plus
closed-form, tie, degenerate-input, jit and validation checks."""
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golden.weights import random_state_dict
from tokax.interop.timm import convert_state_dict, export_state_dict
from tokax.models import ViT
from tokax.models.vit import Block
from tokax.reduction import DensePlan, SelectPlan, ToMe, Tokens, apply_plan, plan_matrix
from tokax.reduction.evit import EViT, evit_num_keep, evit_plan
from vit_testing import apply, random_params, traces

SETTINGS = {
    "fuse07": EViT(keep_rate=0.7, layers=(3, 6, 9), fuse_token=True),
    "nofuse07": EViT(keep_rate=0.7, layers=(3, 6, 9), fuse_token=False),
    "fuse05": EViT(keep_rate=0.5, layers=(3, 6, 9), fuse_token=True),
    "ties_fuse07": EViT(keep_rate=0.7, layers=(3, 6, 9), fuse_token=True),
}


# evit_plan compiled once per (scores shape, k, options)
_plan = jax.jit(evit_plan, static_argnums=1, static_argnames=("fuse_token", "num_prefix"))


@functools.partial(jax.jit, static_argnums=(2, 3))
def _reduce(tokens, scores, k, fuse_token=True):
  """apply_plan(tokens, evit_plan(scores, k)) and the plan."""
  plan = evit_plan(scores, k, fuse_token=fuse_token)
  return apply_plan(tokens, plan), plan


def _relative(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _load(name):
  from conftest import TESTS
  meta = json.loads((TESTS / "golden" / f"{name}.json").read_text())
  return meta, dict(np.load(TESTS / "golden" / f"{name}.npz"))


# ------------------------------------------------------------------------------------------------
# The official model (DeiT-S, keep at blocks 3, 6, 9).


@pytest.fixture(scope="module")
def golden():
  meta, data = _load("evit_deit_small_patch16_224")
  model = ViT(variant="S/16", num_classes=1000)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
  shapes = {k: v.shape for k, v in export_state_dict(zeros).items()}
  assert sorted(shapes) == meta["state_dict_keys"]  # same names -> same random draws as the official model
  state = random_state_dict(shapes, meta["weight_seed"])
  return meta, data, model, state


def _expected_assign(data, tag, n0, fuse):
  """Where every original token lives after the last block, from the official topk indices."""
  batch = data["images"].shape[0]
  assign = np.broadcast_to(np.arange(n0), (batch, n0)).copy()
  layer_keys = sorted((int(k.rsplit("_l", 1)[1]), k) for k in data if k.startswith(f"idx_{tag}_l"))
  for _, key in layer_keys:
    idx = data[key]  # (B, k) into tokens 1..N-1
    k = idx.shape[1]
    for b in range(batch):
      new_of_old = {0: 0}
      for rank, j in enumerate(idx[b]):
        new_of_old[int(j) + 1] = rank + 1
      assign[b] = [new_of_old.get(int(p), (k + 1) if fuse else -1) if p >= 0 else -1 for p in assign[b]]
  return assign


def test_dense_logits_equal_official(golden):
  _, data, model, state = golden
  logits = jax.jit(model.apply)(convert_state_dict(state), data["images"])
  assert _relative(logits, data["logits_dense"]) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("tag", sorted(SETTINGS))
def test_evit_model_equals_official(golden, tag):
  meta, data, model, state = golden
  ties = tag.startswith("ties")
  params = convert_state_dict(dict(state, pos_embed=data["pos_embed_ties"]) if ties else state)
  images = np.full_like(data["images"], 0.25) if ties else data["images"]
  reduction = SETTINGS[tag]
  logits, inter = apply(model.clone(reduction=reduction), params, images)  # ties reuse fuse07's compile
  np.testing.assert_array_equal(np.asarray(inter["num_tokens"]), data[f"tokens_{tag}"])
  assert reduction.token_counts(197, 12) == tuple(data[f"tokens_{tag}"])
  assert _relative(logits, data[f"logits_{tag}"]) <= 1e-5  # measured ~9e-7 (ties: 2e-6) on CPU
  if ties:  # every patch token is the same vector: which tied token is kept cannot change the logits
    return
  fuse = reduction.fuse_token
  expected = _expected_assign(data, tag, 197, fuse)
  assign = np.asarray(inter["assign"])
  np.testing.assert_array_equal(assign, expected)  # same kept set, same order, same fused groups
  size = np.asarray(inter["size"])
  counts = np.stack([np.bincount(a[a >= 0], minlength=size.shape[1]) for a in expected])
  np.testing.assert_array_equal(size, counts)  # a fused token's size = the originals it covers
  if fuse:
    assert size[:, -1].min() > 1 and (assign == size.shape[1] - 1).sum(1).min() == size[:, -1].min()


@pytest.mark.parametrize("tag", ["fuse07", "fuse05"])
def test_plan_from_official_attention_equals_official_selection(golden, tag):
  """Per layer: the plan tokax builds from the official [CLS] attention is the official T."""
  _, data, _, _ = golden
  for key in sorted(k for k in data if k.startswith(f"cls_attn_{tag}_l")):
    layer = key.rsplit("_l", 1)[1]
    cls_attn = data[key]  # (B, N - 1)
    idx = data[f"idx_{tag}_l{layer}"]
    batch, n = cls_attn.shape[0], cls_attn.shape[1] + 1
    full = np.concatenate([np.full((batch, 1), 0.3, np.float32), cls_attn], axis=1)  # column 0 unused
    k = evit_num_keep(SETTINGS[tag].keep_rate, n)
    assert k == idx.shape[1]
    t = np.asarray(_plan_matrix(jnp.asarray(full), k))
    expected = np.zeros((batch, k + 2, n), np.float32)
    expected[:, 0, 0] = 1
    for b in range(batch):
      expected[b, np.arange(1, k + 1), idx[b] + 1] = 1
      dropped = np.setdiff1d(np.arange(n - 1), idx[b])
      expected[b, k + 1, dropped + 1] = cls_attn[b, dropped]
    np.testing.assert_array_equal(t, expected)


@functools.partial(jax.jit, static_argnums=1)
def _plan_matrix(scores, k):
  return plan_matrix(evit_plan(scores, k, fuse_token=True), jnp.ones(scores.shape))


# ------------------------------------------------------------------------------------------------
# The official block on random and duplicate tokens.


@pytest.fixture(scope="module")
def block_golden():
  meta, data = _load("evit_block")
  state = random_state_dict({k: v for k, v in _block_shapes(meta).items()}, meta["block"]["weight_seed"])
  params = convert_state_dict({f"blocks.0.{k}": v for k, v in state.items()})["params"]["blocks_0"]
  return meta, data, {"params": params}


def _block_shapes(meta):
  c = meta["block"]["dim"]
  shapes = {"norm1.weight": (c,), "norm1.bias": (c,), "attn.qkv.weight": (3 * c, c), "attn.qkv.bias": (3 * c,),
            "attn.proj.weight": (c, c), "attn.proj.bias": (c,), "norm2.weight": (c,), "norm2.bias": (c,),
            "mlp.fc1.weight": (4 * c, c), "mlp.fc1.bias": (4 * c,), "mlp.fc2.weight": (c, 4 * c),
            "mlp.fc2.bias": (c,)}
  assert sorted(shapes) == meta["state_dict_keys"]
  return shapes


def _block_float64(state, x, keep_rate, num_heads, fuse):
  """The official EViT Block.forward in float64 numpy (ties: lower index first, as tokax)."""
  from scipy.special import erf
  w = {k: v.astype(np.float64) for k, v in state.items()}
  ln = lambda v, n: ((v - v.mean(-1, keepdims=True)) / np.sqrt(v.var(-1, keepdims=True) + 1e-6) * w[f"{n}.weight"]
                     + w[f"{n}.bias"])
  x = x.astype(np.float64)
  batch, n, c = x.shape
  qkv = (ln(x, "norm1") @ w["attn.qkv.weight"].T + w["attn.qkv.bias"]).reshape(batch, n, 3, num_heads, -1)
  q, k, v = qkv.transpose(2, 0, 3, 1, 4)
  logits = q @ k.transpose(0, 1, 3, 2) * q.shape[-1] ** -0.5
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  x = x + (attn @ v).transpose(0, 2, 1, 3).reshape(batch, n, c) @ w["attn.proj.weight"].T + w["attn.proj.bias"]
  cls_attn = attn[:, :, 0, 1:].mean(1)
  kept = math.ceil(keep_rate * (n - 1))
  rows = []
  for b in range(batch):
    order = np.argsort(-cls_attn[b], kind="stable")
    parts = [x[b, :1], x[b, order[:kept] + 1]]
    if fuse:
      dropped = np.sort(order[kept:])
      parts.append((cls_attn[b, dropped, None] * x[b, dropped + 1]).sum(0, keepdims=True))
    rows.append(np.concatenate(parts))
  x = np.stack(rows)
  h = ln(x, "norm2") @ w["mlp.fc1.weight"].T + w["mlp.fc1.bias"]
  h = 0.5 * h * (1 + erf(h / np.sqrt(2)))
  return x + h @ w["mlp.fc2.weight"].T + w["mlp.fc2.bias"]


@functools.partial(jax.jit, static_argnums=0)
def _block_apply(block, params, x):  # the random and duplicate cases share one compile
  return block.apply(params, Tokens.create(x)).x


@pytest.mark.parametrize("case", ["random", "duplicates"])
@pytest.mark.parametrize("fuse", [True, False])
def test_block_equals_official(block_golden, case, fuse):
  meta, data, params = block_golden
  tag = f"{case}_{'fuse' if fuse else 'nofuse'}"
  cfg = meta["block"]
  block = Block(num_heads=cfg["num_heads"], mlp_dim=4 * cfg["dim"], layer=0, depth=1,
                reduction=EViT(keep_rate=cfg["keep_rate"], layers=(0,), fuse_token=fuse))
  out = np.asarray(_block_apply(block, params, jnp.asarray(data[f"{case}_x"])))
  official = data[f"{tag}_out"]
  assert out.shape == official.shape
  # On duplicates the [CLS] attention ties (margin 0 in the json): torch and jax may keep different
  # copies, but the copies are equal vectors, so the block output still matches.
  plain = slice(0, official.shape[1] - int(fuse))
  np.testing.assert_allclose(out[:, plain], official[:, plain], rtol=1e-5, atol=5e-5)
  if fuse:
    # The fused token is small (std ~0.05 vs ~1 for the others: attention weights sum to ~0.3), so
    # norm2 amplifies the official fp32 error (~1e-5 in the mid-block state) to ~4e-3 in its output,
    # measured against float64. tokax is within 1e-6 of float64 there (next assertion).
    np.testing.assert_allclose(out[:, -1], official[:, -1], rtol=0, atol=1e-2)
  reference = _block_float64(random_state_dict(_block_shapes(meta), cfg["weight_seed"]), data[f"{case}_x"],
                             cfg["keep_rate"], cfg["num_heads"], fuse)
  np.testing.assert_allclose(out, reference, rtol=0, atol=5e-6)


@pytest.mark.parametrize("case", ["random", "duplicates"])
@pytest.mark.parametrize("fuse", [True, False])
def test_plan_on_official_state_equals_official_reduction(block_golden, case, fuse):
  """apply_plan(evit_plan(official attention)) on the official mid-block state = the official
  reduced state (input of norm2), to float32 rounding."""
  _, data, _ = block_golden
  tag = f"{case}_{'fuse' if fuse else 'nofuse'}"
  mid, cls_attn = data[f"{tag}_mid"], data[f"{tag}_cls_attn"]
  full = jnp.concatenate([jnp.full((mid.shape[0], 1), 0.5), jnp.asarray(cls_attn)], axis=1)
  k = data[f"{tag}_idx"].shape[1]
  reduced, plan = _reduce(Tokens.create(jnp.asarray(mid)), full, k, fuse)
  assert isinstance(plan, DensePlan if fuse else SelectPlan)
  np.testing.assert_allclose(np.asarray(reduced.x), data[f"{tag}_reduced"], rtol=1e-6, atol=1e-6)
  if case == "random":
    index = plan.index if not fuse else jnp.argmax(plan.matrix[:, 1:k + 1], axis=-1)
    np.testing.assert_array_equal(np.asarray(index)[:, -k:] - 1, data[f"{tag}_idx"])


# ------------------------------------------------------------------------------------------------
# Closed forms, ties and bookkeeping.


def test_plan_against_float64_reference():
  rng = np.random.default_rng(0)
  batch, n, c, k = 3, 23, 8, 9
  x = rng.standard_normal((batch, n, c)).astype(np.float32)
  logits = rng.standard_normal((batch, n))
  cls_attn = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
  size = rng.integers(1, 4, (batch, n)).astype(np.float32)
  tokens = Tokens.create(jnp.asarray(x)).replace(size=jnp.asarray(size))
  out, plan = _reduce(tokens, jnp.asarray(cls_attn), k)
  for b in range(batch):  # float64 numpy: top-k by descending attention, then the raw-weighted fusion
    order = np.argsort(-cls_attn[b, 1:].astype(np.float64), kind="stable")
    kept, dropped = order[:k] + 1, np.sort(order[k:]) + 1
    fused = (cls_attn[b, dropped, None].astype(np.float64) * x[b, dropped].astype(np.float64)).sum(0)
    want = np.concatenate([x[b, :1], x[b, kept], fused[None]], axis=0)
    np.testing.assert_allclose(np.asarray(out.x[b]), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.size[b]),
                                  np.concatenate([size[b, :1], size[b, kept], [size[b, dropped].sum()]]))
    assign = np.asarray(out.assign[b])
    np.testing.assert_array_equal(assign[kept], np.arange(1, k + 1))
    np.testing.assert_array_equal(assign[dropped], np.full(len(dropped), k + 1))
  # weights are NOT renormalised: the fused row sums to the dropped tokens' attention mass (< 1)
  t = np.asarray(plan.matrix)
  assert np.all(t[:, -1].sum(-1) < 1) and np.allclose(t[:, -1].sum(-1), 1 - np.sort(cls_attn[:, 1:])[:, -k:].sum(-1)
                                                      - cls_attn[:, 0], atol=1e-6)


def test_per_image_plans_in_a_batch():
  scores = jnp.asarray([[0.5, 0.1, 0.2, 0.3, 0.4], [0.5, 0.4, 0.3, 0.2, 0.1]])
  plan = _plan(scores, 2, fuse_token=False)
  np.testing.assert_array_equal(np.asarray(plan.index), [[0, 4, 3], [0, 1, 2]])  # descending attention


def test_ties_lower_index_first_and_distillation_token_protected():
  scores = jnp.asarray([[0.9, 0.05, 0.2, 0.2, 0.1, 0.2, 0.05]])
  np.testing.assert_array_equal(np.asarray(_plan(scores, 3, fuse_token=False).index), [[0, 2, 3, 5]])
  # with [CLS, dist] both are kept first and the dist token is never scored (the official code
  # would score it like a patch token)
  np.testing.assert_array_equal(np.asarray(_plan(scores, 2, num_prefix=2, fuse_token=False).index),
                                [[0, 1, 2, 3]])


def test_duplicate_tokens_give_the_same_features_whichever_copy_is_kept():
  rng = np.random.default_rng(1)
  base = rng.standard_normal((4, 16)).astype(np.float32)
  copies = np.asarray([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
  x = np.concatenate([rng.standard_normal((1, 16)), base[copies]]).astype(np.float32)[None]
  scores = np.concatenate([[0.3], np.asarray([0.1, 0.05, 0.02, 0.03])[copies]]).astype(np.float32)[None]
  out, plan = _reduce(Tokens.create(jnp.asarray(x)), jnp.asarray(scores), 4)
  kept = np.asarray(plan.matrix)[0, 1:5].argmax(-1)
  np.testing.assert_array_equal(kept, [1, 5, 9, 2])  # jax: lower index first among equal scores
  # a tie-breaking that prefers the HIGHER index among copies (torch's order is unspecified)
  order = np.lexsort((-np.arange(10), -scores[0, 1:].astype(np.float64)))
  other_kept, other_dropped = order[:4] + 1, np.sort(order[4:]) + 1
  assert list(other_kept) == [9, 5, 1, 10]
  fused = (scores[0, other_dropped, None] * x[0, other_dropped]).sum(0)
  want = np.concatenate([x[0, :1], x[0, other_kept], fused[None]])
  np.testing.assert_allclose(np.asarray(out.x[0]), want, rtol=1e-6, atol=1e-7)


def test_num_keep_matches_official_ceil():
  for keep_rate in (0.7, 0.5, 0.9, 0.6, 1 / 3, 0.25):
    for n in (197, 140, 100, 72, 17, 2):
      assert evit_num_keep(keep_rate, n) == min(n - 1, max(1, math.ceil(keep_rate * (n - 1))))
  assert [evit_num_keep(0.7, n) for n in (197, 140, 100)] == [138, 98, 70]
  assert evit_num_keep(1e-12, 197) == 1  # tiny keep rates keep one token
  assert evit_num_keep(0.7, 1) == 0


def test_token_counts():
  assert EViT().token_counts(197, 12) == (197,) * 3 + (140,) * 3 + (100,) * 3 + (72,) * 3
  assert EViT(fuse_token=False).token_counts(197, 12)[-1] == 69
  assert EViT(keep_rate=1e-9, layers=(0, 1)).token_counts(197, 2) == (3, 3)  # cls, 1 kept, fused


# ------------------------------------------------------------------------------------------------
# The model: identity, jit, degenerate inputs, validation.


@pytest.fixture(scope="module")
def tiny():
  """A depth-3 ViT on 64 x 64 images (17 tokens) with random weights."""
  model = ViT(variant="Ti/16", depth=3, num_classes=10, image_size=64)
  return model, random_params(model, seed=1)


def _images(seed):
  return np.random.default_rng(seed).standard_normal((2, 64, 64, 3)).astype(np.float32)


def test_keep_rate_one_is_the_identity(tiny):
  model, params = tiny
  x = _images(2)
  dense, _ = apply(model, params, x)
  for fuse in (True, False):
    logits, inter = apply(model.clone(reduction=EViT(keep_rate=1.0, layers=(0, 1, 2), fuse_token=fuse)), params, x)
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(dense))
    assert list(np.asarray(inter["num_tokens"])) == [17] * 3
  # ceil(0.99 * 16) = 16 = every candidate: the official code returns early, no fused token
  logits, inter = apply(model.clone(reduction=EViT(keep_rate=0.99, layers=(1,))), params, x)
  assert list(np.asarray(inter["num_tokens"])) == [17] * 3
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(dense))


def test_tiny_keep_rate_keeps_one_token(tiny):
  model, params = tiny
  logits, inter = apply(model.clone(reduction=EViT(keep_rate=1e-6, layers=(0, 2))), params, _images(3))
  assert list(np.asarray(inter["num_tokens"])) == [3, 3, 3]
  assert np.isfinite(np.asarray(logits)).all()
  np.testing.assert_array_equal(np.asarray(inter["size"]).sum(-1), [17, 17])  # nothing is lost: fused


def test_jit_compiles_once(tiny):
  model, params = tiny
  reduced = model.clone(reduction=EViT(keep_rate=0.5, layers=(0, 1, 2)))  # as test_degenerate_inputs_give_no_nan
  before = traces(reduced)
  for seed in range(3):
    out, _ = apply(reduced, params, _images(seed))
  assert out.shape == (2, 10)
  assert traces(reduced) - before <= 1


@pytest.mark.parametrize("images", ["constant", "zero_keys"])
def test_degenerate_inputs_give_no_nan(tiny, images):
  model, params = tiny
  x = jnp.full((2, 64, 64, 3), 0.5)
  if images == "zero_keys":  # every key zero: uniform attention, every score tied
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if "qkv" in jax.tree_util.keystr(path) else v, params)
  for reduction in (EViT(keep_rate=0.5, layers=(0, 1, 2)), EViT(keep_rate=0.3, layers=(1,), fuse_token=False)):
    logits, inter = apply(model.clone(reduction=reduction), params, x)  # one compile for both kinds
    assert np.isfinite(np.asarray(logits)).all()
    assert np.isfinite(np.asarray(inter["size"])).all()


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), "0.7", True, None])
def test_invalid_keep_rate(bad):
  with pytest.raises(ValueError, match="EViT.keep_rate"):
    EViT(keep_rate=bad)


@pytest.mark.parametrize("bad", [(-1,), (3, 3), (1.5,), "3", (True,)])
def test_invalid_layers(bad):
  with pytest.raises(ValueError, match="EViT.layers"):
    EViT(layers=bad)


def test_layers_outside_the_model_and_missing_class_token(tiny):
  model, params = tiny
  x = jnp.ones((1, 64, 64, 3))
  with pytest.raises(ValueError, match="EViT.layers"):
    jax.eval_shape(model.clone(reduction=EViT(layers=(3,))).apply, params, x)
  gap = ViT(variant="Ti/16", depth=2, num_classes=10, image_size=64, pool="gap", class_token=False,
            reduction=EViT(layers=(0,)))
  with pytest.raises(ValueError, match="class token"):
    jax.eval_shape(gap.init, jax.random.key(0), x)


def test_list_layers_are_hashable():
  r = EViT(layers=[3, 6, 9])
  assert r.layers == (3, 6, 9) and hash(r) == hash(EViT(layers=(3, 6, 9)))
  assert EViT().pruning_layers(12) == (3, 6, 9)  # layers=None: the quarter points of the depth
  assert r.placement == "mid" and r.scores == ("cls",) and r.prop_attn is False


def test_only_pruning_blocks_ask_attention_for_the_cls_row():
  """The other blocks keep score-free (flash) attention; the logits do not change."""
  from tokax.reduction.base import layer_scores

  evit = EViT(keep_rate=0.7, layers=(1, 3))
  assert [layer_scores(evit, layer=i, depth=4) for i in range(4)] == [(), ("cls",), (), ("cls",)]
  assert layer_scores(ToMe(r=2), layer=0, depth=4) == ToMe(r=2).scores
