"""Training objectives of reduction methods: DeiT hard distillation, SiT's FRD loss, MCTF consistency.

Loss values against float64 numpy closed forms and the official SiT DistillationLoss (golden); the
jitted steps against those losses, with the teacher frozen and one compile for all MCTF schedules.
"""
import functools
import json
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.models.vit import ViT
from tokax.reduction import MCTF, Slim
from tokax.train import losses, objectives, optim
from tokax.train.model import normalize_images
from tokax.train.step import init_state, make_train_step

from random_variables import random_like, random_variables
from vit_testing import fast_compile

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden"
IMAGE, CLASSES, BATCH = 16, 5, 4


def _vit(**kwargs):
  return ViT(**{"variant": "Ti/4", "image_size": IMAGE, "num_classes": CLASSES, "width": 16, "depth": 2,
                "num_heads": 2, "mlp_dim": 32, **kwargs})


def _state(model, tx, seed, init_variables=None):
  """A train state of random parameters (random_like: no init program to compile; the zero-initialised heads
  would give every class the same logit). The variables' structure is init_variables' (model.init's)."""
  init = init_variables or (lambda rng: model.init(rng, jnp.zeros((1, IMAGE, IMAGE, 3))))
  params = random_like(jax.eval_shape(init, jax.random.key(0)), seed, scale=0.3)
  return jax.jit(lambda p: init_state(model, tx, jax.random.key(seed), (IMAGE, IMAGE, 3), init_variables=lambda _: p))(
      params)


@pytest.fixture(scope="module")
def batch():
  return {"image": np.random.default_rng(7).uniform(size=(BATCH, IMAGE, IMAGE, 3)).astype(np.float32),
          "label": np.array([0, 3, 1, 4], np.int32)}


@pytest.fixture(scope="module")
def tx_schedule():
  schedule = optim.lr_schedule(peak_lr=1e-2, warmup_steps=0, total_steps=10)
  return optim.adamw(schedule, weight_decay=0.0, grad_clip_norm=1.0), schedule


def _log_softmax64(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _ce64(logits, labels):
  return -np.mean(_log_softmax64(logits)[np.arange(len(labels)), labels])


def _frd64(s_logits, s_tokens, t_logits, t_tokens, labels, lambda_token, lambda_logits, tau):
  """Sense-X/SiT losses.py DistillationLoss ('frd', CrossEntropyLoss base), float64 numpy."""
  loss_cls = _ce64(s_logits, labels)
  loss_token = lambda_token * sum(np.mean((np.float64(s) - np.float64(t)) ** 2) / len(s_tokens)
                                  for s, t in zip(s_tokens, t_tokens))
  log_s, log_t = _log_softmax64(np.float64(s_logits) / tau), _log_softmax64(np.float64(t_logits) / tau)
  loss_logits = np.sum(np.exp(log_t) * (log_t - log_s)) / len(labels) * tau * tau * lambda_logits
  return np.array([loss_cls + loss_token + loss_logits, loss_cls, loss_token, loss_logits])


# ------------------------------------------------------------------------------------------------
# SiT FRD loss.

@pytest.mark.parametrize("case", ["defaults", "tau3"])
def test_frd_loss_equals_official(case):
  g = np.load(GOLDEN / "sit_frd_loss.npz")
  meta = json.loads((GOLDEN / "sit_frd_loss.json").read_text())["cases"][case]
  kw = dict(lambda_token=meta["lambda_token"], lambda_logits=meta["lambda_logits"], tau=meta["tau"])
  s_logits, t_logits = g[f"{case}_student_logits"], g[f"{case}_teacher_logits"]
  s_tokens, t_tokens, labels = g[f"{case}_student_tokens"], g[f"{case}_teacher_tokens"], g[f"{case}_labels"]

  def loss(sl, st):
    total, parts = losses.frd_loss(sl, list(st), t_logits, list(t_tokens), labels, **kw)
    return total, parts

  (total, parts), (g_logits, g_tokens) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(s_logits, s_tokens)
  ours = np.array([total, parts["loss_cls"], parts["loss_token"], parts["loss_logits"]], np.float64)
  np.testing.assert_allclose(ours, g[f"{case}_out"], rtol=2e-6, atol=1e-6)  # official, torch float64
  np.testing.assert_allclose(ours, g[f"{case}_out32"], rtol=2e-6, atol=1e-6)  # official, torch float32
  np.testing.assert_allclose(ours, _frd64(s_logits, s_tokens, t_logits, t_tokens, labels, **kw), rtol=2e-6,
                             atol=1e-6)
  np.testing.assert_allclose(g_logits, g[f"{case}_g_student_logits"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g_tokens, g[f"{case}_g_student_tokens"], rtol=1e-5, atol=1e-8)


@pytest.mark.slow  # a jitted train step (compile-bound)
def test_sit_step_trains_reverse_modules_against_a_frozen_teacher(batch, tx_schedule):
  tx, schedule = tx_schedule
  student, teacher = _vit(reduction=Slim(stage_blocks=(1, 1))), _vit()
  objective = objectives.sit_frd(student, teacher, lambda_token=2.0, lambda_logits=1.5, tau=2.0)
  init = objectives.sit_init_variables(student, (IMAGE, IMAGE, 3))
  state = _state(student, tx, 0, init)
  teacher_vars = random_variables(teacher, (IMAGE, IMAGE, 3), seed=4, scale=0.3)
  # reverse modules exist only in the train state, for both blocks after the first slimming (16 -> 8 tokens)
  assert sorted(state.params) == ["params", "reverse"] and sorted(state.params["reverse"]) == ["blocks_0", "blocks_1"]
  # the student starts from the teacher: every teacher array lands in the student
  merged, taken = objectives.merge_params(state.params, teacher_vars)
  assert taken == len(jax.tree.leaves(teacher_vars))
  np.testing.assert_array_equal(merged["params"]["blocks_1"]["attn"]["qkv"]["kernel"],
                                teacher_vars["params"]["blocks_1"]["attn"]["qkv"]["kernel"])

  step_fn = make_train_step(model=student, tx=tx, schedule=schedule, **objective.step_kwargs())

  @functools.partial(jax.jit, compiler_options=fast_compile())
  def run(state, teacher_vars):  # one compilation: the outputs the step's loss sees, and the step
    images = normalize_images(batch["image"])
    outputs = objective.forward(state.params, images, jax.random.key(0))
    new_state, metrics = step_fn(state, batch, teacher_vars)
    evaluated = student.apply(new_state.params, images, return_intermediates=True)
    return outputs, objective.teacher(teacher_vars, images), new_state, metrics, evaluated

  before = jax.device_get((state.params, teacher_vars))
  (logits, tokens), (t_logits, t_tokens), new_state, metrics, (out, extra) = run(state, teacher_vars)
  assert [t.shape for t in tokens] == [t.shape for t in t_tokens] == [(BATCH, 16, 16)] * 2
  expected = _frd64(logits, tokens, t_logits, t_tokens, np.asarray(batch["label"]), 2.0, 1.5, 2.0)[0]
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
  # the teacher tokens' mean square, reduced as the token MSE is (mean over B, N0, C, then over blocks)
  teacher_ms = np.mean([np.mean(np.float64(t) ** 2) for t in t_tokens])
  np.testing.assert_allclose(float(metrics["teacher_token_ms"]), teacher_ms, rtol=1e-5)
  chex.assert_trees_all_equal(jax.device_get(teacher_vars), before[1])  # the teacher is not updated
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), new_state.params["reverse"], before[0]["reverse"])
  assert all(jax.tree.leaves(moved))  # every reverse parameter learned
  # the deployable model: model.apply on the train state's variables slims and ignores the reverse modules
  assert out.shape == (BATCH, CLASSES) and list(extra["num_tokens"]) == [9, 9]


# ------------------------------------------------------------------------------------------------
# DeiT hard distillation.

@pytest.mark.slow  # a jitted train step (compile-bound)
def test_hard_distillation_step_loss_and_frozen_teacher(batch, tx_schedule):
  tx, schedule = tx_schedule
  student = _vit(distilled=True)
  teacher = _vit(width=24, depth=1, num_heads=3, mlp_dim=48)  # any classifier
  objective = objectives.hard_distillation(teacher, alpha=0.5, label_smoothing=0.0)
  state = _state(student, tx, 1)
  teacher_vars = random_variables(teacher, (IMAGE, IMAGE, 3), seed=6, scale=0.3)
  head = teacher_vars["params"]["head"]  # confident, varied teacher labels
  head["kernel"] = (3.0 * np.random.default_rng(8).standard_normal(head["kernel"].shape)).astype(np.float32)
  head["bias"] = 0 * head["bias"]
  step_fn = make_train_step(model=student, tx=tx, schedule=schedule, **objective.step_kwargs())

  @functools.partial(jax.jit, compiler_options=fast_compile())
  def run(state, teacher_vars):  # one compilation for the logits, the step, and d loss / d teacher
    images = normalize_images(batch["image"])
    heads = student.apply(state.params, images, distill_logits=True)
    step = lambda frozen: (lambda out: (out[1]["loss"], out))(step_fn(state, batch, frozen))
    (loss, stepped), teacher_grads = jax.value_and_grad(step, has_aux=True)(teacher_vars)  # the step traced once
    return heads, teacher.apply(teacher_vars, images), loss, teacher_grads, stepped

  before = jax.device_get(teacher_vars)
  (cls_logits, dist_logits), t_logits, loss, teacher_grads, (new_state, metrics) = run(state, teacher_vars)
  labels = np.asarray(batch["label"])
  t_labels = np.argmax(np.asarray(t_logits), -1)
  assert len(set(t_labels)) > 1 and np.any(t_labels != labels)  # the two terms differ
  expected = 0.5 * _ce64(cls_logits, labels) + 0.5 * _ce64(dist_logits, t_labels)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(teacher_grads))
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["teacher_agreement"]),
                             np.mean(np.argmax(np.asarray(dist_logits), -1) == t_labels))
  chex.assert_trees_all_equal(jax.device_get(teacher_vars), before)
  assert not np.allclose(new_state.params["params"]["head_dist"]["kernel"], state.params["params"]["head_dist"]["kernel"])


# ------------------------------------------------------------------------------------------------
# MCTF consistency.

def test_consistency_loss_closed_form():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((6, 4)).astype(np.float32) * 2
  s_cls, t_cls = rng.standard_normal((2, 6, 8)).astype(np.float32)
  labels = rng.integers(0, 4, 6)
  p = np.exp(_log_softmax64(logits))[np.arange(6), labels]
  threshold = float(np.median(p))
  gate = p > threshold
  assert 0 < gate.sum() < 6
  expected = np.mean((np.float64(t_cls) - s_cls) ** 2, axis=-1)[gate].mean()
  loss, passed = losses.consistency_loss(logits, s_cls, t_cls, labels, threshold=threshold)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  assert float(passed) == gate.mean()
  # the teacher gets no gradient, the student the closed-form one
  g_s, g_t = jax.grad(lambda s, t: losses.consistency_loss(logits, s, t, labels, threshold=threshold)[0],
                      argnums=(0, 1))(s_cls, t_cls)
  np.testing.assert_array_equal(g_t, 0.0)
  np.testing.assert_allclose(g_s, -2 * (t_cls - s_cls) / 8 * gate[:, None] / gate.sum(), rtol=1e-5, atol=1e-7)
  loss, passed = losses.consistency_loss(logits, s_cls, t_cls, labels, threshold=1.0)  # nobody passes
  assert float(loss) == 0.0 and float(passed) == 0.0


@pytest.mark.slow  # a jitted train step (compile-bound)
def test_mctf_consistency_one_compile_for_all_teacher_schedules(batch, tx_schedule):
  tx, schedule = tx_schedule
  model = _vit(reduction=MCTF(r=4, activate_layers=(0, 1)))
  teacher_r = (0, 2, 6)
  objective = objectives.mctf_consistency(model, teacher_r, weights=(1.0, 0.5, 3.0), threshold=0.0)
  state = _state(model, tx, 2)
  labels = np.asarray(batch["label"])
  images = normalize_images(batch["image"])
  branches = [model.clone(reduction=r) for r in objectives.teacher_schedules(model.reduction, teacher_r)]
  assert [b.reduction.token_counts(17, 2) if b.reduction else None for b in branches] == [None, (15, 13), (11, 10)]


  @functools.partial(jax.jit, compiler_options=fast_compile())  # MCTF's merges compile ~3x faster (vit_testing)
  def every_branch(params):  # student and every teacher schedule, in one compilation
    outs = [m.apply(params, images, return_intermediates=True) for m in [model, *branches]]
    return [(logits, extra["features"][:, 0]) for logits, extra in outs]

  step = jax.jit(chex.assert_max_traces(
      make_train_step(model=model, tx=tx, schedule=schedule, **objective.step_kwargs()), n=1),
      compiler_options=fast_compile())
  seen = set()
  for _ in range(5):
    params = jax.device_get(state.params)
    state, metrics = step(state, batch)
    index = int(metrics["teacher_index"])
    seen.add(index)
    # the loss from the sampled branch, recomputed outside the step (no dropout: deterministic)
    outs = every_branch(params)
    (s_logits, s_cls), (t_logits, t_cls) = outs[0], outs[index + 1]
    s_cls, t_cls = np.float64(s_cls), np.float64(t_cls)
    consistency = np.mean(np.mean((t_cls - s_cls) ** 2, axis=-1))  # threshold 0: every sample passes
    expected = _ce64(s_logits, labels) + 0.5 * _ce64(t_logits, labels) + 3.0 * consistency
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=2e-5)
    assert float(metrics["loss_consistency"]) > 0 and float(metrics["confidence_pass"]) == 1.0
  assert len(seen) >= 2, seen  # different schedules ran, all in the one compilation
