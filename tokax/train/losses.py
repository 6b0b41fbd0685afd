"""Classification losses."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels.

  Args:
    logits: (B, K) float.
    labels: (B,) int class indices.
    label_smoothing: epsilon; the target is (1 - eps) * onehot + eps / K.

  Returns:
    (B,) float32 losses.
  """
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array, *, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against soft targets (mixup / cutmix label weights).

  -sum_k t_k log softmax(logits)_k with t = (1 - eps) * targets + eps / K: timm's
  SoftTargetCrossEntropy on mixup_target(..., smoothing=eps), which smooths each one-hot before
  mixing; smoothing is affine, so smoothing the mixed targets is the same thing.

  Args:
    logits: (B, K) float.
    targets: (B, K) float, rows summing to 1.
    label_smoothing: epsilon (0: the targets as given).

  Returns:
    (B,) float32 losses.
  """
  if targets.shape != logits.shape:
    raise ValueError(f"soft_cross_entropy: targets {targets.shape} must match logits {logits.shape} (B, K)")
  targets = targets.astype(jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def classification_cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0) -> jax.Array:
  """(B,) losses: softmax_cross_entropy for (B,) int labels, soft_cross_entropy for (B, K) float ones."""
  if labels.ndim == 2:
    return soft_cross_entropy(logits, labels, label_smoothing=label_smoothing)
  return softmax_cross_entropy(logits, labels, label_smoothing=label_smoothing)


def hard_distillation_loss(cls_logits: jax.Array, dist_logits: jax.Array, teacher_logits: jax.Array,
                           labels: jax.Array, *, alpha: float = 0.5, label_smoothing: float = 0.0) -> jax.Array:
  """DeiT's hard-label distillation (facebookresearch/deit losses.py, distillation_type="hard"), scalar.

  (1 - alpha) * mean CE(cls_logits, labels) + alpha * mean CE(dist_logits, argmax teacher_logits):
  the class head learns the labels (smoothed as the base criterion), the distillation head the
  teacher's hard decisions (never smoothed). The teacher gets no gradient.

  Args:
    cls_logits, dist_logits: (B, K) the student's class-token and distillation-token heads.
    teacher_logits: (B, K) the frozen teacher's logits.
    labels: (B,) int class indices, or (B, K) mixup / cutmix targets (DeiT's base criterion is then timm's
      SoftTargetCrossEntropy; classification_cross_entropy).
    alpha: weight of the distillation term (DeiT: 0.5).
    label_smoothing: epsilon of the class head's targets.
  """
  teacher_labels = jnp.argmax(jax.lax.stop_gradient(teacher_logits), axis=-1)
  base = classification_cross_entropy(cls_logits, labels, label_smoothing=label_smoothing).mean()
  distill = softmax_cross_entropy(dist_logits, teacher_labels).mean()
  return (1.0 - alpha) * base + alpha * distill


def kl_distillation(student_logits: jax.Array, teacher_logits: jax.Array, *, tau: float = 1.0) -> jax.Array:
  """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), summed over classes, mean over the batch.

  torch's F.kl_div(log_softmax(s / tau), log_softmax(t / tau), reduction="batchmean",
  log_target=True) * tau^2, as SiT's FRD loss computes it: (B, K), (B, K) -> () float32.
  """
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / tau, axis=-1)
  log_t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / tau, axis=-1)
  return jnp.sum(jnp.exp(log_t) * (log_t - log_s)) / student_logits.shape[0] * tau * tau


def token_mse(student_tokens: Sequence[jax.Array], teacher_tokens: Sequence[jax.Array]) -> jax.Array:
  """SiT's token term: (1 / L) sum_i mean((student_i - teacher_i)^2) over L layers of (B, N0, C) tokens."""
  if len(student_tokens) != len(teacher_tokens) or not student_tokens:
    raise ValueError(f"token_mse: need the same non-zero number of student and teacher layers; got "
                     f"{len(student_tokens)} and {len(teacher_tokens)}")
  total = jnp.zeros((), jnp.float32)
  for s, t in zip(student_tokens, teacher_tokens):
    if s.shape != t.shape:
      raise ValueError(f"token_mse: student tokens {s.shape} and teacher tokens {t.shape} differ; the reverse "
                       "modules must recover the teacher's N0 patch tokens")
    diff = s.astype(jnp.float32) - jax.lax.stop_gradient(t).astype(jnp.float32)
    total = total + jnp.mean(diff * diff) / len(student_tokens)
  return total


def frd_loss(student_logits: jax.Array, student_tokens: Sequence[jax.Array], teacher_logits: jax.Array,
             teacher_tokens: Sequence[jax.Array], labels: jax.Array, *, lambda_token: float = 2.0,
             lambda_logits: float = 2.0, tau: float = 1.0,
             label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SiT's feature-recalibration distillation (Sense-X/SiT losses.py DistillationLoss, "frd").

      CE(student_logits, labels)
      + lambda_token * (1 / L) sum_i MSE(student_tokens_i, teacher_tokens_i)
      + lambda_logits * tau^2 * KL(softmax(t / tau) || softmax(s / tau))   (batchmean)

  Args:
    student_logits, teacher_logits: (B, K).
    student_tokens: L arrays (B, N0, C), the student's patch tokens after each block, recovered to
      N0 by the reverse modules where tokens were slimmed.
    teacher_tokens: L arrays (B, N0, C), the teacher's patch tokens after each block.
    labels: (B,) int, or (B, K) mixup / cutmix targets (classification_cross_entropy).
    lambda_token, lambda_logits, tau: the official defaults 2.0, 2.0, 1.0.
    label_smoothing: epsilon of the CE targets (official: timm's LabelSmoothingCrossEntropy, or
      soft mixup targets).

  Returns:
    (loss, {"loss_cls", "loss_token", "loss_logits"}) (each term already weighted).
  """
  loss_cls = classification_cross_entropy(student_logits, labels, label_smoothing=label_smoothing).mean()
  loss_token = lambda_token * token_mse(student_tokens, teacher_tokens)
  loss_logits = lambda_logits * kl_distillation(student_logits, teacher_logits, tau=tau)
  return loss_cls + loss_token + loss_logits, {"loss_cls": loss_cls, "loss_token": loss_token,
                                               "loss_logits": loss_logits}


def consistency_loss(student_logits: jax.Array, student_cls: jax.Array, teacher_cls: jax.Array, labels: jax.Array,
                     *, threshold: float = 0.4) -> tuple[jax.Array, jax.Array]:
  """MCTF's confidence-gated token-reduction consistency (mlvlab/MCTF deit.py L204-205, engine.py L51-56).

  Per sample, mean_c (teacher_cls - student_cls)^2 with the teacher detached, averaged over the
  samples whose student softmax probability of the label exceeds `threshold`; 0 when none passes.

  Args:
    student_logits: (B, K) the student branch's logits (gives the confidence; no gradient through the gate).
    student_cls, teacher_cls: (B, C) final-LayerNorm class-token features of the two branches.
    labels: (B,) int.
    threshold: the confidence gate (official task_type[2] = 0.4).

  Returns:
    (loss, fraction of samples that passed the gate).
  """
  probs = jax.nn.softmax(jax.lax.stop_gradient(student_logits).astype(jnp.float32), axis=-1)
  confidence = jnp.take_along_axis(probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  gate = (confidence > threshold).astype(jnp.float32)
  diff = jax.lax.stop_gradient(teacher_cls).astype(jnp.float32) - student_cls.astype(jnp.float32)
  per_sample = jnp.mean(diff * diff, axis=-1)
  passed = gate.sum()
  loss = jnp.where(passed > 0, jnp.sum(per_sample * gate) / jnp.maximum(passed, 1.0), 0.0)
  return loss, passed / gate.shape[0]
