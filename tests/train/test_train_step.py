"""The jitted train step learns, augmentation keeps shapes, and a diverging run stops with its step."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.train import augment, checkpoint, optim
from tokax.train import run as training
from tokax.train.model import build_model
from tokax.train.step import init_state, make_train_step


def _tiny_model(num_classes=4):
  return build_model(variant="Ti/4", image_size=16, num_classes=num_classes, pool="gap",
                     width=32, depth=2, num_heads=2, mlp_dim=64)


def test_train_step_overfits_a_fixed_batch():
  model = _tiny_model()
  schedule = optim.lr_schedule(peak_lr=3e-3, warmup_steps=2, total_steps=20)
  tx = optim.adamw(schedule, weight_decay=0.0, grad_clip_norm=1.0)
  state = jax.jit(functools.partial(init_state, model, tx, image_shape=(16, 16, 3)))(jax.random.key(0))
  batch = {"image": jax.random.uniform(jax.random.key(1), (8, 16, 16, 3)), "label": jnp.arange(8) % 4}
  step = jax.jit(chex.assert_max_traces(make_train_step(model=model, tx=tx, schedule=schedule), n=1),
                 donate_argnums=(0,))  # one compilation for all 20 steps
  losses = []
  for _ in range(20):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 20
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(metrics["accuracy"]) == 1.0


def test_random_translate():
  images = jax.random.uniform(jax.random.key(0), (4, 10, 12, 3))
  np.testing.assert_array_equal(augment.random_translate(images, jax.random.key(1), 0), images)
  shifted = augment.random_translate(images, jax.random.key(1), 2)
  assert shifted.shape == images.shape
  # every output is a shift of its input by at most 2 pixels (edges repeated): its centre is in there
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
  for i in range(4):
    found = [(dy, dx) for dy in range(5) for dx in range(5)
             if np.array_equal(padded[i, dy:dy + 10, dx:dx + 12], shifted[i])]
    assert found, i


def test_non_finite_loss_raises_with_the_step(tmp_path):
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "digits_vit.py"
  spec = importlib.util.spec_from_file_location("digits_vit", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("runlocal")
  config.lr = 1e38  # step 1 has lr 0 (warmup), step 2 overflows the weights, step 3's loss is NaN
  config.grad_clip_norm = 0.0
  config.progress_bar = False
  with pytest.raises(FloatingPointError, match=r"at step 3\b"):
    training.train(config, str(tmp_path))


def _runlocal_config(name="cluttered_digits_vit"):
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parents[2] / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("runlocal")
  config.progress_bar = False
  return config


def test_periodic_checkpoint_is_the_state_at_its_step(tmp_path):
  """The step-2 checkpoint, saved asynchronously while step 3 ran on donated buffers, equals a run stopped at 2."""
  import orbax.checkpoint as ocp

  config = _runlocal_config()  # checkpoints every 2 steps, 3 steps in all
  training.train(config, str(tmp_path / "three"))
  config.total_steps = 2
  stopped = training.train(config, str(tmp_path / "two"))
  manager = ocp.CheckpointManager(str(tmp_path / "three" / "checkpoints"), item_names=checkpoint.ITEMS)
  assert manager.all_steps() == [2, 3]
  restored = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                        data=ocp.args.JsonRestore()))
  manager.close()
  saved = restored["state"]
  assert int(saved["step"]) == 2
  assert restored["data"]["epoch"] == 0 and restored["data"]["position"] == 2  # 64 examples, batch 16: 4 per epoch
  jax.tree.map(np.testing.assert_array_equal, saved["params"], jax.device_get(stopped.params))
