"""Offline generator metrics on digits: a tokax-trained digit classifier scores samples.

  clf = train_classifier(train_ds)               # small CNN, 32-d penultimate features
  scores = score_samples(clf, images, labels, train_ds, test_ds)

Reported: the classifier's own test accuracy; class-conditional accuracy of the samples; the
Frechet distance between sample and test features (with FD(test, train) as the floor); and the
mean nearest-neighbour L2 distance of each sample to the training images (memorisation check,
with the test images' own distance as the reference).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg

from tokax.data import offline


class DigitCNN(nn.Module):
  """4 conv layers (32, 64, 64, 64; stride 2 after the first) -> flatten (4x4x64 at 32 px) -> 32-d features -> logits.

  Flattening keeps the digit's layout; the first version's global mean pool after a ~15 px receptive
  field scored only 84% on the digits test split (98.6% with the flatten, 800 steps, on a CPU).
  """
  num_classes: int = 10

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = images.mean(-1, keepdims=True) * 2 - 1
    for i, (feats, stride) in enumerate(((32, 1), (64, 2), (64, 2), (64, 2))):
      x = nn.relu(nn.Conv(feats, (3, 3), strides=stride, name=f"conv{i}")(x))
    feats = nn.relu(nn.Dense(32, name="features")(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes, name="head")(feats), feats


@dataclasses.dataclass
class Classifier:
  model: DigitCNN
  params: Any
  test_accuracy: float

  def predict(self, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) in [0, 1] -> logits (N, K), features (N, 32)."""
    run = jax.jit(self.model.apply)
    outs = [run(self.params, jnp.asarray(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return np.concatenate([np.asarray(o[0]) for o in outs]), np.concatenate([np.asarray(o[1]) for o in outs])


def train_classifier(train: offline.ArrayDataset, test: offline.ArrayDataset, *, steps: int = 800,
                     batch_size: int = 128, lr: float = 2e-3, max_shift: int = 2, seed: int = 0) -> Classifier:
  """Adam on cross-entropy with random shifts; returns the classifier and its test accuracy."""
  from tokax.train import augment
  model = DigitCNN(train.num_classes)
  params = model.init(jax.random.key(seed), jnp.zeros((1, *train.images.shape[1:])))
  tx = optax.adam(optax.cosine_decay_schedule(lr, steps))
  opt = tx.init(params)
  images, labels = jnp.asarray(train.images), jnp.asarray(train.labels)

  @jax.jit
  def step(params, opt, rng):
    idx_rng, shift_rng = jax.random.split(rng)
    idx = jax.random.randint(idx_rng, (batch_size,), 0, images.shape[0])
    x = augment.random_translate(images[idx], shift_rng, max_shift)

    def loss_fn(p):
      logits, _ = model.apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  for i in range(steps):
    params, opt = step(params, opt, jax.random.fold_in(jax.random.key(seed + 1), i))
  clf = Classifier(model, params, 0.0)
  logits, _ = clf.predict(test.images)
  clf.test_accuracy = float(np.mean(logits.argmax(-1) == test.labels))
  return clf


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two (N, D) feature sets (float64)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mu_a, mu_b = a.mean(0), b.mean(0)
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  covmean = scipy.linalg.sqrtm(s_a @ s_b)
  covmean = covmean.real if np.iscomplexobj(covmean) else covmean
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2 * covmean))


def nearest_neighbour_distance(queries: np.ndarray, references: np.ndarray) -> float:
  """Mean over queries of the L2 distance (grey pixels in [0, 1]) to the closest reference image."""
  q = np.asarray(queries, np.float64).mean(-1).reshape(len(queries), -1)
  r = np.asarray(references, np.float64).mean(-1).reshape(len(references), -1)
  d2 = (q * q).sum(1)[:, None] - 2 * q @ r.T + (r * r).sum(1)[None]
  return float(np.sqrt(np.maximum(d2.min(1), 0)).mean())


def score_samples(clf: Classifier, images: np.ndarray, labels: np.ndarray, train: offline.ArrayDataset,
                  test: offline.ArrayDataset) -> dict[str, float]:
  """accuracy, fd (vs test features), fd_floor (test vs train), nn_train (samples), nn_floor (test)."""
  logits, feats = clf.predict(images)
  _, test_feats = clf.predict(test.images)
  _, train_feats = clf.predict(train.images)
  return {
      "accuracy": float(np.mean(logits.argmax(-1) == labels)),
      "fd": frechet_distance(feats, test_feats),
      "fd_floor": frechet_distance(test_feats, train_feats),
      "nn_train": nearest_neighbour_distance(images, train.images),
      "nn_floor": nearest_neighbour_distance(test.images, train.images),
      "classifier_test_accuracy": clf.test_accuracy,
  }
