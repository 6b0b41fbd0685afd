"""Training objectives that reduction methods need: DeiT hard distillation, SiT's FRD, MCTF consistency.

Each builder returns an Objective: the hooks of tokax.train.step.train_step (a loss over the
outputs, and where needed a forward pass other than model.apply, a frozen teacher, or variables
beyond the model's). The classifier's plain objective is not here: train_step's default.

- hard_distillation (DeiT, facebookresearch/deit losses.py "hard"): a student ViT with a
  distillation token, a frozen teacher classifier run inside the jitted step;
  loss = 0.5 CE(cls head, y) + 0.5 CE(dist head, argmax teacher).
- sit_frd (Sense-X/SiT losses.py "frd", models/lvvit.py forward): the student ViT slims with
  reduction Slim; the reverse modules (ReverseSlim, train only) live in the state's "reverse"
  collection beside "params", so model.apply(state.params, ...) is the deployable slimmed model;
  loss = CE + lambda_token * mean_i MSE(recovered_i, teacher_i) + lambda_logits * tau^2 KL.
- mctf_consistency (mlvlab/MCTF deit.py L161-208, engine.py L41-59): the student runs its MCTF
  schedule, a teacher branch (same weights) one schedule drawn per step from a fixed tuple,
  selected by lax.switch so every schedule is compiled once into the same step;
  loss = w0 CE(student) + w1 CE(teacher) + w2 confidence-gated MSE of the final class tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokax.models.vit import Block, ViT
from tokax.reduction import MCTF, ReverseSlim, Slim
from tokax.reduction.tokens import Tokens
from tokax.train import losses
from tokax.train.step import Batch, ForwardFn, LossFn, Metrics, TeacherFn

REVERSE = "reverse"  # the state's collection of SiT's train-only reverse modules


@dataclasses.dataclass(frozen=True)
class Objective:
  """The step hooks of one objective (see tokax.train.step.train_step); None keeps the default.

  Attributes:
    loss_fn: (outputs, batch) -> (loss, metrics); batch["teacher"] holds the teacher's outputs.
    forward: (params, images, dropout key) -> outputs, instead of model.apply.
    teacher: (frozen, images) -> teacher outputs.
    apply_kwargs: model.apply keywords when forward is None.
    init_variables: rng -> the state's variables, instead of model.init.
  """
  loss_fn: LossFn
  forward: ForwardFn | None = None
  teacher: TeacherFn | None = None
  apply_kwargs: dict[str, Any] | None = None
  init_variables: Callable[[jax.Array], Any] | None = None

  def step_kwargs(self) -> dict[str, Any]:
    """Keyword arguments of make_train_step."""
    return dict(loss_fn=self.loss_fn, forward=self.forward, teacher=self.teacher, apply_kwargs=self.apply_kwargs)


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Top-1 against (B,) int labels, or against the largest weight of (B, K) mixup / cutmix targets."""
  if labels.ndim == 2:
    labels = jnp.argmax(labels, -1)
  return jnp.mean(jnp.argmax(logits, -1) == labels)


# ------------------------------------------------------------------------------------------------
# DeiT hard-label distillation.

def hard_distillation(teacher_model: nn.Module, *, alpha: float = 0.5, label_smoothing: float = 0.0) -> Objective:
  """DeiT's hard distillation through the distillation token.

  The student must be a ViT with distilled=True (its apply returns both heads with
  distill_logits=True); the teacher is any classifier, run in eval mode on the same normalised
  images with the frozen parameters the step receives.
  Metrics: accuracy (class head), dist_accuracy (distillation head against y), teacher_agreement.
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"distill.alpha: the distillation weight must be in [0, 1] (DeiT: 0.5); got {alpha!r}")

  def teacher(frozen: Any, images: jax.Array) -> jax.Array:
    return teacher_model.apply(frozen, images)

  def loss_fn(outputs: Any, batch: Batch) -> tuple[jax.Array, Metrics]:
    cls_logits, dist_logits = outputs
    teacher_logits = batch["teacher"]
    loss = losses.hard_distillation_loss(cls_logits, dist_logits, teacher_logits, batch["label"], alpha=alpha,
                                         label_smoothing=label_smoothing)
    return loss, {"accuracy": _accuracy(cls_logits, batch["label"]),
                  "dist_accuracy": _accuracy(dist_logits, batch["label"]),
                  "teacher_agreement": jnp.mean(jnp.argmax(dist_logits, -1) == jnp.argmax(teacher_logits, -1))}

  return Objective(loss_fn=loss_fn, teacher=teacher, apply_kwargs={"distill_logits": True})


# ------------------------------------------------------------------------------------------------
# SiT: reverse modules and feature-recalibration distillation.

def _is_block(module: nn.Module, method: str) -> bool:
  return isinstance(module, Block) and method == "__call__"


def block_tokens(model: ViT, variables: Any, images: jax.Array, **apply_kwargs: Any) -> tuple[Any, list[Tokens]]:
  """model.apply(variables, images, **apply_kwargs) and the Tokens state after every block (after its slimming).

  Returns (outputs, [Tokens after block 0, ..., after block depth-1]).
  """
  outputs, state = model.apply(variables, images, capture_intermediates=_is_block, mutable=["intermediates"],
                               **apply_kwargs)
  found = state["intermediates"]
  return outputs, [found[f"blocks_{i}"]["__call__"][0] for i in range(model.arch.depth)]


def reverse_modules(model: ViT) -> dict[int, ReverseSlim]:
  """SiT's reverse modules of a slimming ViT: {layer: ReverseSlim} for every block after the first slimming.

  Official rtsm[i]: ReverseTSM(C, layer_patches[i + 1], N0) once any token has been dropped by
  block i, else Identity (absent here).
  """
  if not isinstance(model.reduction, Slim):
    raise ValueError(f"SiT training: the student's reduction must be Slim (config.reduction = dict(name='slim', ...)); got "
                     f"{type(model.reduction).__name__}")
  depth, num_patches = model.arch.depth, (model.image_size // model.arch.patch_size) ** 2
  modules = {}
  for layer in range(depth):
    module = model.reduction.reverse_module(layer=layer, depth=depth, num_patches=num_patches, name=f"blocks_{layer}")
    if module is not None:
      modules[layer] = module
  return modules


def sit_init_variables(model: ViT, image_shape: tuple[int, ...]) -> Callable[[jax.Array], Any]:
  """rng -> {"params": the student's, "reverse": {"blocks_i": the reverse module of block i}}."""
  modules = reverse_modules(model)
  counts = model.reduction.layer_counts(model.arch.depth, (model.image_size // model.arch.patch_size) ** 2)

  def init(rng: jax.Array) -> Any:
    model_rng, reverse_rng = jax.random.split(rng)
    variables = dict(model.init(model_rng, jnp.zeros((1, *image_shape), jnp.float32)))
    width = model.arch.width
    variables[REVERSE] = {
        f"blocks_{layer}": module.init(jax.random.fold_in(reverse_rng, layer),
                                       jnp.zeros((1, counts[layer], width), jnp.float32))["params"]
        for layer, module in modules.items()}
    return variables

  return init


def sit_frd(model: ViT, teacher_model: ViT, *, lambda_token: float = 2.0, lambda_logits: float = 2.0,
            tau: float = 1.0, label_smoothing: float = 0.0) -> Objective:
  """SiT's training objective: the slimming student, its reverse modules, FRD against a dense teacher.

  Student tokens of block i: the patch tokens after block i and its slimming, through the reverse
  module of block i once tokens have been dropped (else as they are); teacher tokens: the dense
  teacher's patch tokens after block i (both before the final norm). The state holds
  {"params", "reverse"} (sit_init_variables). Metrics: accuracy, loss_cls, loss_token, loss_logits,
  and teacher_token_ms, the teacher tokens' mean square averaged over blocks (the same reduction
  as the token MSE): while the reverse modules are untrained loss_token ~ lambda_token *
  teacher_token_ms, so this says how much of loss_token is the scale of the teacher's residual
  stream (the official loss has no normalisation; neither does tokax's).
  """
  modules = reverse_modules(model)
  if teacher_model.arch.depth != model.arch.depth or teacher_model.reduction is not None:
    raise ValueError("SiT training: the teacher must be the dense model of the student's depth "
                     f"(official: the same LV-ViT without slimming); got depth {teacher_model.arch.depth}, "
                     f"reduction {teacher_model.reduction!r}")
  if tau <= 0:
    raise ValueError(f"distill.tau: the distillation temperature must be > 0 (official 1.0); got {tau!r}")

  def forward(params: Any, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    logits, states = block_tokens(model, {"params": params["params"]}, images, train=True, rngs={"dropout": rng})
    recovered = []
    for layer, tokens in enumerate(states):
      patches = tokens.x[:, tokens.num_prefix:]
      if layer in modules:
        patches = modules[layer].apply({"params": params[REVERSE][f"blocks_{layer}"]}, patches)
      recovered.append(patches)
    return logits, recovered

  def teacher(frozen: Any, images: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    logits, states = block_tokens(teacher_model, frozen, images)
    return logits, [t.x[:, t.num_prefix:] for t in states]

  def loss_fn(outputs: Any, batch: Batch) -> tuple[jax.Array, Metrics]:
    logits, tokens = outputs
    teacher_logits, teacher_tokens = batch["teacher"]
    loss, parts = losses.frd_loss(logits, tokens, teacher_logits, teacher_tokens, batch["label"],
                                  lambda_token=lambda_token, lambda_logits=lambda_logits, tau=tau,
                                  label_smoothing=label_smoothing)
    teacher_ms = sum(jnp.mean(jnp.square(t.astype(jnp.float32))) for t in teacher_tokens) / len(teacher_tokens)
    return loss, {"accuracy": _accuracy(logits, batch["label"]), **parts, "teacher_token_ms": teacher_ms}

  return Objective(loss_fn=loss_fn, forward=forward, teacher=teacher)


# ------------------------------------------------------------------------------------------------
# MCTF token-reduction consistency.

def teacher_schedules(student: MCTF, teacher_r: Sequence[int | float]) -> tuple[MCTF | None, ...]:
  """The teacher branch's reductions: the student's MCTF with r replaced by each of `teacher_r` (0: dense)."""
  if not teacher_r:
    raise ValueError("consistency.teacher_r: need at least one teacher r (official: every r in "
                     "range(r_teacher_max), e.g. (0, 1, ..., 7))")
  return tuple(None if r == 0 else dataclasses.replace(student, r=r) for r in teacher_r)


def mctf_consistency(model: ViT, teacher_r: Sequence[int | float], *, weights: Sequence[float] = (1.0, 1.0, 3.0),
                     threshold: float = 0.4, label_smoothing: float = 0.0) -> Objective:
  """MCTF's token-reduction consistency: student schedule plus a teacher schedule drawn per step.

  Both branches share the parameters (and get gradients: CE of each branch; the consistency term
  pulls the student's final class token towards the detached teacher's). The teacher schedule is
  teacher_r[k], k uniform per step (drawn from the step's dropout key), picked with lax.switch over
  one closure per schedule: one compilation holds all of them. Metrics: accuracy, loss_student,
  loss_teacher, loss_consistency, confidence_pass, teacher_index.
  """
  if not isinstance(model.reduction, MCTF):
    raise ValueError(f"MCTF consistency: the student's reduction must be MCTF (config.reduction = dict(name='mctf', ...)); "
                     f"got {type(model.reduction).__name__}")
  if model.pool != "cls":
    raise ValueError("MCTF consistency compares the final class tokens: the model needs pool='cls'")
  if len(weights) != 3:
    raise ValueError(f"consistency.weights: expected (student CE, teacher CE, consistency) weights; got {weights!r}")
  branches = tuple(model.clone(reduction=r) for r in teacher_schedules(model.reduction, teacher_r))
  w_student, w_teacher, w_consistency = (float(w) for w in weights)

  def run(branch: ViT, params: Any, images: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits, extra = branch.apply(params, images, train=True, rngs={"dropout": rng}, return_intermediates=True)
    return logits, extra["features"][:, 0]  # the final-LayerNorm class token (B, C)

  def forward(params: Any, images: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
    student_rng, teacher_rng, pick_rng = jax.random.split(rng, 3)
    student_logits, student_cls = run(model, params, images, student_rng)
    index = jax.random.randint(pick_rng, (), 0, len(branches))
    teacher_logits, teacher_cls = jax.lax.switch(
        index, [lambda b=b: run(b, params, images, teacher_rng) for b in branches])
    return {"student_logits": student_logits, "student_cls": student_cls, "teacher_logits": teacher_logits,
            "teacher_cls": teacher_cls, "teacher_index": index}

  def loss_fn(outputs: dict[str, jax.Array], batch: Batch) -> tuple[jax.Array, Metrics]:
    labels = batch["label"]
    ce = lambda logits: losses.softmax_cross_entropy(logits, labels, label_smoothing=label_smoothing).mean()
    loss_student, loss_teacher = ce(outputs["student_logits"]), ce(outputs["teacher_logits"])
    loss_consistency, passed = losses.consistency_loss(outputs["student_logits"], outputs["student_cls"],
                                                       outputs["teacher_cls"], labels, threshold=threshold)
    loss = w_student * loss_student + w_teacher * loss_teacher + w_consistency * loss_consistency
    return loss, {"accuracy": _accuracy(outputs["student_logits"], labels), "loss_student": loss_student,
                  "loss_teacher": loss_teacher, "loss_consistency": loss_consistency, "confidence_pass": passed,
                  "teacher_index": outputs["teacher_index"].astype(jnp.float32)}

  return Objective(loss_fn=loss_fn, forward=forward)


# ------------------------------------------------------------------------------------------------
# Weights from another run.

def merge_params(target: Any, source: Any) -> tuple[Any, int]:
  """`target` with every leaf that `source` has at the same path and shape replaced by source's.

  Returns (merged tree, number of leaves taken from source). New parameters (a distillation token,
  slimming and reverse modules) keep their initial values.
  """
  flat_source = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(source)}
  taken = 0

  def pick(path, leaf):
    nonlocal taken
    other = flat_source.get(jax.tree_util.keystr(path))
    if other is not None and tuple(np.shape(other)) == tuple(leaf.shape):
      taken += 1
      return jnp.asarray(other, leaf.dtype)
    return leaf

  return jax.tree_util.tree_map_with_path(pick, target), taken
