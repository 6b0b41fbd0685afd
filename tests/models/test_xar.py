"""xAR model: block-causality, KV-cached sampling equal to prefix recomputation, the losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.models.xar import XAR, cfg_scales, rope_tables, sample, time_grid, xar_loss


def _tiny(entity, size=0):
  return XAR(token_dim=4, grid_size=4, entity=entity, entity_size=size, width=16, encoder_depth=1,
             decoder_depth=1, num_heads=2, num_classes=3)


@pytest.fixture(scope="module")
def subsample():
  model = _tiny("subsample", 2)
  ents = model.entities
  x = jax.random.normal(jax.random.key(0), (2, ents.seq_len, 4))
  t = jax.random.uniform(jax.random.key(1), (2, ents.num_entities))

  @jax.jit
  def init(rng):  # then perturb every parameter so AdaLN gates, norms and biases are all non-trivial
    params = model.init(rng, x, jnp.array([0, 3]), t)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    return jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  params = init(jax.random.key(2))
  return model, params, x, t


def test_later_entities_do_not_change_earlier_velocities(subsample):
  model, params, x, t = subsample
  ents = model.entities
  apply = jax.jit(model.apply)
  out = apply(params, x, jnp.array([0, 3]), t)
  later = ents.entity_id >= 2
  x2 = x.at[:, later].set(jax.random.normal(jax.random.key(9), x[:, later].shape))
  t2 = t.at[:, 2:].set(0.9)
  out2 = apply(params, x2, jnp.array([0, 3]), t2)
  np.testing.assert_allclose(out2[:, ~later], out[:, ~later], rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(out2[:, later] - out[:, later])).max() > 1e-3


def test_kv_cache_equals_prefix_recomputation(subsample):
  model, params, _, _ = subsample
  run = jax.jit(lambda p, y, k, cache: sample(model, p, y, k, num_steps=3, cfg=2.0, method="em",
                                              use_cache=cache), static_argnums=3)
  labels = jnp.array([1, 2])
  cached = run(params, labels, jax.random.key(4), True)
  recomputed = run(params, labels, jax.random.key(4), False)
  assert float(jnp.abs(cached).mean()) > 0.1
  np.testing.assert_allclose(cached, recomputed, rtol=1e-4, atol=1e-4)  # fp32 summation order


def test_teacher_forcing_sees_clean_context(subsample):
  """Entity 0 has no context, so TF and NCL agree there; later entities differ."""
  model, params, x, _ = subsample
  labels = jnp.array([0, 1])
  loss = jax.jit(lambda p, tf: xar_loss(model, p, x, labels, jax.random.key(5), label_drop=0.0,
                                        teacher_forcing=tf, train=False), static_argnums=1)
  ncl, aux = loss(params, False)
  tf, aux_tf = loss(params, True)
  np.testing.assert_allclose(aux_tf["loss_first"], aux["loss_first"], rtol=1e-5)
  assert abs(float(aux_tf["loss_last"]) - float(aux["loss_last"])) > 1e-4
  assert np.isfinite(float(ncl)) and np.isfinite(float(tf))


def test_rope_rotates_rows_then_columns():
  cos, sin = rope_tables(np.array([[2.0, 5.0]]), head_dim=8)
  freqs = 1.0 / 10000 ** (np.arange(0, 4, 2) / 4)
  angles = np.concatenate([np.repeat(2 * freqs, 2), np.repeat(5 * freqs, 2)])
  np.testing.assert_allclose(cos[0], np.cos(angles), rtol=1e-6)
  np.testing.assert_allclose(sin[0], np.sin(angles), rtol=1e-6)


def test_schedules():
  np.testing.assert_allclose(cfg_scales(2.5, 4), [1.0, 1.5, 2.0, 2.5])
  np.testing.assert_allclose(cfg_scales(2.5, 1), [2.5])
  np.testing.assert_allclose(cfg_scales(2.5, 3, "constant"), [2.5] * 3)
  np.testing.assert_allclose(time_grid(3, "em"), [1.0, 0.52, 0.04, 0.0], rtol=1e-6)
  np.testing.assert_allclose(time_grid(2, "euler"), [1.0, 0.5, 0.0])


def test_bad_tokens_name_the_shape(subsample):
  model, params, x, t = subsample
  with pytest.raises(ValueError, match=r"tokens must be \(B, L, C\)"):
    model.apply(params, x[:, :-1], jnp.array([0, 1]), t)


def test_attention_dropout_only_in_training(subsample):
  """attn_dropout: eval equals the model without it; training samples a mask per dropout key."""
  model, params, x, t = subsample
  dropped = model.clone(attn_dropout=0.5)
  labels = jnp.array([0, 1])
  apply = jax.jit(lambda m, p, key, train: m.apply(p, x, labels, t, train=train, rngs={"dropout": key}),
                  static_argnums=(0, 3))
  np.testing.assert_array_equal(apply(dropped, params, jax.random.key(0), False),
                                apply(model, params, jax.random.key(0), False))
  first, again = apply(dropped, params, jax.random.key(0), True), apply(dropped, params, jax.random.key(0), True)
  np.testing.assert_array_equal(first, again)
  assert float(jnp.abs(first - apply(dropped, params, jax.random.key(1), True)).max()) > 1e-3
  assert float(jnp.abs(first - apply(model, params, jax.random.key(0), True)).max()) > 1e-3
