"""ToMe / PiToMe / DToMe with matching="pallas" (the TPU kernel in interpret mode) give the plans
and logits of matching="xla"."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.models import ViT
from tokax.reduction import PiToMe, ToMe
from tokax.reduction.dtome import DToMe, threshold_plan
from vit_testing import apply, random_params


@pytest.mark.slow
def test_tome_pallas_gives_the_xla_plan_and_logits():
  model = ViT(variant="Ti/8", depth=1, image_size=32, num_classes=10)
  images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  params = random_params(model, seed=1)
  (ref_logits, ref_inter), (got_logits, got_inter) = (
      apply(model.clone(reduction=ToMe(r=4, matching=m, interpret=m == "pallas")), params, images)
      for m in ("xla", "pallas"))
  ref_assign, got_assign = (jax.tree.leaves(t) for t in (ref_inter, got_inter))
  assert len(ref_assign) == len(got_assign)
  for ref, got in zip(ref_assign, got_assign):  # assign (where every patch ended up: the composed plans), sizes, features
    np.testing.assert_array_equal(got, ref)
  np.testing.assert_array_equal(got_logits, ref_logits)


def test_pitome_and_dtome_pallas_plans_equal_xla():
  """PiToMe's bsm layer (its protected layer takes the same rank_edges path) and DToMe's threshold plan."""
  from tokax.reduction.pitome import pitome_plan
  rng = np.random.default_rng(5)
  metric = jnp.asarray(rng.standard_normal((2, 29, 8)), jnp.float32)
  mask = jnp.asarray(np.arange(29)[None] < np.array([[29], [20]]))
  pallas = dict(matching_implementation="pallas", interpret=True)

  @jax.jit
  def plans(metric, mask):  # xla and pallas, PiToMe and DToMe, in one compiled call
    return ([pitome_plan(metric, 0.7, 0.5, bsm=True, **kw) for kw in ({}, pallas)],
            [threshold_plan(metric, mask, 0.1, has_cls=True, **kw) for kw in ({}, pallas)])

  (ref, got), ((ref_dtome, ref_r), (got_dtome, got_r)) = plans(metric, mask)
  np.testing.assert_array_equal(got.dst, ref.dst)
  np.testing.assert_array_equal(got_dtome.dst, ref_dtome.dst)
  np.testing.assert_array_equal(got_r, ref_r)
  assert int(ref_r.min()) > 0


def test_matching_field_is_checked():
  for cls, kwargs in ((ToMe, {}), (PiToMe, {}), (DToMe, dict(thresholds=(0.1,)))):
    with pytest.raises(ValueError, match="matching"):
      cls(matching="triton", **kwargs)
