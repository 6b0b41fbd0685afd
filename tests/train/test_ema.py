"""The classifier's weight EMA (config.ema_decay): timm's ModelEmaV2 in closed form, evaluated beside the raw weights,
checkpointed and resumed bitwise, restored by load_run(ema=True / False)."""
import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from vit_testing import fast_compile

from tokax.models import ViT
from tokax.train import checkpoint, evaluate, optim
from tokax.train import logging as metric_logging
from tokax.train import run as training
from tokax.train.config_utils import load_config_file
from tokax.train.restore import load_run
from tokax.train.step import EmaTrainState, ema_params_of, init_state, make_train_step
from tokax.train.tasks import classifier

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = ViT(variant="Ti/16", width=16, depth=1, num_heads=2, mlp_dim=32, num_classes=3, image_size=16)


def _steps(ema_decay, num_steps=4):
  """(params after each step, from step 0, as float64, final state) of SGD steps on fixed random batches (SGD: a
  rounding difference stays one, where Adam's normalisation can blow it up on near-zero gradients)."""
  schedule = optim.lr_schedule(peak_lr=1.0, warmup_steps=0, total_steps=10)
  tx = optim.optimizer("sgd", schedule, weight_decay=0.05, grad_clip_norm=None)
  init = lambda rng: init_state(TINY, tx, rng, (16, 16, 3), ema=bool(ema_decay))
  state = jax.jit(init, compiler_options=fast_compile())(jax.random.key(0))
  step = jax.jit(make_train_step(model=TINY, tx=tx, schedule=schedule, ema_decay=ema_decay),
                 compiler_options=fast_compile())
  rng = np.random.default_rng(0)
  history = [jax.tree.map(lambda x: np.asarray(x, np.float64), state.params)]
  for _ in range(num_steps):
    batch = {"image": rng.uniform(size=(4, 16, 16, 3)).astype(np.float32), "label": rng.integers(0, 3, 4)}
    state, _ = step(state, batch)
    history.append(jax.tree.map(lambda x: np.asarray(x, np.float64), state.params))
  return history, jax.device_get(state)


def test_ema_is_timms_model_ema_in_closed_form():
  """ema_k = d^k p_0 + (1 - d) sum_{j=1..k} d^(k-j) p_j (ModelEmaV2 from the initial weights), in float64; the raw
  weights are those of the same run without an EMA."""
  decay, k = 0.9, 4
  history, state = _steps(decay, k)
  expected = jax.tree.map(
      lambda *ps: decay ** k * ps[0] + (1 - decay) * sum(decay ** (k - j) * ps[j] for j in range(1, k + 1)),
      *history)
  moved = jax.tree.map(lambda e, p0: np.max(np.abs(e - p0)), expected, history[0])
  assert max(jax.tree.leaves(moved)) > 1e-2  # the average moved well away from the initial weights
  jax.tree.map(lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7), state.ema_params,
               expected)
  _, without = _steps(0.0, k)
  assert ema_params_of(without) is None and isinstance(state, EmaTrainState)
  # the same training: equal up to float32 rounding (XLA fuses the two programs differently)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), state.params, without.params)


def _config():
  config = load_config_file(str(REPO / "configs" / "digits_vit.py") + ":runlocal")
  config.total_steps, config.eval_every_steps, config.checkpoint_every_steps, config.keep_checkpoints = 4, 2, 2, 3
  config.progress_bar = False
  config.ema_decay, config.optimizer, config.layer_decay = 0.9, "lamb", 0.75
  return config


def _raw_state(workdir, step):
  """The state tree of checkpoint `step`, read with the layout it was saved with."""
  manager = ocp.CheckpointManager(str(workdir / "checkpoints"), item_names=checkpoint.ITEMS)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                           data=ocp.args.JsonRestore()))
  manager.close()
  return jax.device_get(restored["state"])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """4 steps of digits_vit:runlocal with LAMB, layer decay 0.75 and EMA 0.9, checkpoints at 2 and 4;
  (workdir, result, state of checkpoint 4)."""
  workdir = tmp_path_factory.mktemp("straight")
  result = training.train(_config(), str(workdir))
  return workdir, result, _raw_state(workdir, 4)


def test_ema_run_resumes_exactly(straight, tmp_path):
  """Resumed from checkpoint 2 (checkpoint 4 removed): the same state at step 4, EMA included, bitwise."""
  workdir, _, state = straight
  assert set(state) >= {"params", "ema_params", "opt_state", "rng", "step"}
  resumed = tmp_path / "resumed"
  shutil.copytree(workdir, resumed)
  shutil.rmtree(resumed / "checkpoints" / "4")
  training.train(_config(), str(resumed))
  jax.tree.map(np.testing.assert_array_equal, _raw_state(resumed, 4), state)


def test_ema_run_evaluates_both_weights_and_load_run_returns_either(straight):
  workdir, result, state = straight
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.params), state["ema_params"])
  records = metric_logging.read_metrics(workdir / "metrics.jsonl")
  at_2 = next(r for r in records if r["step"] == 2 and "val/accuracy" in r)
  assert "val_ema/accuracy" in at_2 and "val_ema/loss" in at_2
  final = records[-1]
  assert {"val/loss", "test/accuracy", "val_ema/loss", "test_ema/accuracy"} <= set(final)
  assert result.metrics == {k: v for k, v in final.items() if k != "step"}

  # load_run: the EMA weights by default (ema=True), the raw ones with ema=False; val_ema/* measured the EMA's
  ema_run, raw_run = load_run(str(workdir)), load_run(str(workdir), ema=False)
  jax.tree.map(np.testing.assert_array_equal, ema_run.variables, state["ema_params"])
  jax.tree.map(np.testing.assert_array_equal, raw_run.variables, state["params"])
  head = lambda run: run.variables["params"]["head"]["kernel"]
  assert not np.array_equal(head(ema_run), head(raw_run))
  val = classifier.load_split(ema_run.config, "val")
  eval_step = evaluate.make_eval_step(ema_run.model)
  for run, prefix in ((ema_run, "val_ema"), (raw_run, "val")):
    measured = evaluate.evaluate(eval_step, run.variables, val, batch_size=32)
    np.testing.assert_allclose(final[f"{prefix}/loss"], measured["loss"], rtol=1e-5)
    assert final[f"{prefix}/accuracy"] == measured["accuracy"]


def test_init_from_starts_the_ema_at_the_loaded_weights(straight):
  """init_from a run that kept an EMA starts from its EMA weights (load_run's), and the fresh run's EMA starts there
  too (timm creates the EMA after loading), in buffers of its own (the step donates both trees)."""
  workdir, _, state = straight
  config = _config()
  config.init_from = {"workdir": str(workdir)}
  target = classifier.target(config)
  fresh = jax.jit(target.init_fn)(jax.random.key(1))
  started = classifier._start_from(config, teacher=None)(fresh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(started.params), state["ema_params"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(started.ema_params), state["ema_params"])
  for ema, param in zip(jax.tree.leaves(started.ema_params), jax.tree.leaves(started.params)):
    assert ema is not param and ema.unsafe_buffer_pointer() != param.unsafe_buffer_pointer()


@pytest.mark.parametrize("value", [1.0, 1.5, -0.5])
def test_ema_decay_outside_zero_one_is_refused(tmp_path, value):
  config = _config()
  config.ema_decay = value
  with pytest.raises(ValueError, match=r"config.ema_decay=.*: expected a number in \[0, 1\)"):
    training.train(config, str(tmp_path))
