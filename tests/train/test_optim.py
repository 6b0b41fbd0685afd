"""The lr schedule in closed form, the weight-decay mask and the steps/epochs helper."""
import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tokax.train import optim
from tokax.train.config_utils import steps


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
