"""The classifier train state and the (un-jitted) train step; tokax.train.run jits it with shardings and donation."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from tokax.train import augment, losses, optim
from tokax.train.model import normalize_images

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
# (model outputs, batch) -> (scalar loss, {name: scalar}); the outputs are whatever model.apply
# returns with the step's apply_kwargs (logits, or (logits, intermediates) for losses that need more).
LossFn = Callable[[Any, Batch], tuple[jax.Array, Metrics]]
# (params, normalised images (B, H, W, 3), dropout key) -> outputs: a forward pass other than
# model.apply (several branches, extra train-only modules); its key is the step's dropout key.
ForwardFn = Callable[[Any, jax.Array, jax.Array], Any]
# (frozen params, normalised images) -> outputs of a frozen teacher, seen by the loss as batch["teacher"].
TeacherFn = Callable[[Any, jax.Array], Any]


@flax.struct.dataclass
class TrainState:
  """Everything a step updates; a plain pytree, so it shards, donates and checkpoints as one.

  Attributes:
    step: () int32, number of updates applied.
    params: the model variables ({"params": ...}).
    opt_state: the optimizer state.
    rng: (2,) uint32 raw key data (jax.random.key_data) of the run's base key; step s draws its
      randomness from fold_in(rng, s), so a restored state replays the same dropout and augmentation.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


@flax.struct.dataclass
class EmaTrainState(TrainState):
  """A TrainState that also keeps an exponential moving average of the params (the classifier's config.ema_decay).

  A class of its own, so that runs without an EMA keep TrainState's leaves and their checkpoints (those written
  before the EMA existed too) restore as they are.

  Attributes:
    ema_params: the EMA of params (optim.ema_update after every step), starting at the initial params.
  """
  ema_params: Any


def ema_params_of(state: TrainState) -> Any | None:
  """The state's EMA of the params, or None for a state that keeps none."""
  return state.ema_params if isinstance(state, EmaTrainState) else None


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, image_shape: tuple[int, ...],
               step_rng: jax.Array | None = None,
               init_variables: Callable[[jax.Array], Any] | None = None, ema: bool = False) -> TrainState:
  """Initial state for images of shape (H, W, 3); jit it with out_shardings to create it in place.

  `rng` initialises the parameters; `step_rng` (default: fold_in(rng, 1)) is the base key of the steps.
  `init_variables(rng)` replaces model.init when the state holds more than the model's variables
  (SiT's train-only reverse modules). `ema`: an EmaTrainState, its EMA starting at the params.
  """
  if init_variables is None:
    params = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32))
  else:
    params = init_variables(rng)
  step_rng = jax.random.fold_in(rng, 1) if step_rng is None else step_rng
  fields = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                rng=jax.random.key_data(step_rng))
  return EmaTrainState(**fields, ema_params=params) if ema else TrainState(**fields)


def classification_loss(label_smoothing: float = 0.0) -> LossFn:
  """Softmax cross-entropy on logits (B, K) against batch["label"]; reports train accuracy too.

  Labels (B,) int are hard; (B, K) float are mixup / cutmix weights (soft_cross_entropy, accuracy
  against their argmax).
  """

  def loss_fn(logits: jax.Array, batch: Batch) -> tuple[jax.Array, Metrics]:
    labels = batch["label"]
    loss = losses.classification_cross_entropy(logits, labels, label_smoothing=label_smoothing).mean()
    hard = jnp.argmax(labels, -1) if labels.ndim == 2 else labels
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == hard)}

  return loss_fn


def train_step(state: TrainState, batch: Batch, frozen: Any = None, *, model: nn.Module,
               tx: optax.GradientTransformation, schedule: optax.Schedule, loss_fn: LossFn | None = None,
               label_smoothing: float = 0.0, max_shift: int = 0, apply_kwargs: dict[str, Any] | None = None,
               forward: ForwardFn | None = None, teacher: TeacherFn | None = None,
               ema_decay: float = 0.0) -> tuple[TrainState, Metrics]:
  """One optimizer update on a batch.

  Args:
    state: the current state.
    batch: {"image": (B, H, W, 3) float32 in [0, 1], "label": (B,) int32, ...}.
    model, tx, schedule: the ViT, its optimizer and that optimizer's lr schedule (for logging).
    loss_fn: (outputs, batch) -> (loss, metrics); default: classification_loss(label_smoothing).
    label_smoothing: epsilon of the default loss's targets.
    max_shift: random translation in pixels (0: no augmentation).
    apply_kwargs: extra keyword arguments of model.apply (e.g. return_intermediates=True).
    frozen: parameters the step reads but never updates (a distillation teacher's), or None.
    forward: (params, images, dropout key) -> outputs, replacing model.apply (apply_kwargs unused).
    teacher: (frozen, images) -> teacher outputs, computed outside the gradient and handed to the
      loss as batch["teacher"] (under stop_gradient).
    ema_decay: decay of the weight EMA (timm's ModelEmaV2, after the update); > 0 needs an EmaTrainState
      (init_state(..., ema=True)); 0 leaves an EmaTrainState's EMA as it is.

  Returns:
    the new state and scalar metrics: loss, the loss_fn's metrics, grad_norm, lr (of this step).
  """
  if ema_decay and not isinstance(state, EmaTrainState):
    raise ValueError(f"ema_decay={ema_decay}: the state keeps no EMA; make it with init_state(..., ema=True)")
  loss_fn = classification_loss(label_smoothing) if loss_fn is None else loss_fn
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  augment_rng, dropout_rng = jax.random.split(rng)
  images = normalize_images(augment.random_translate(batch["image"], augment_rng, max_shift))

  if teacher is not None:
    batch = {**batch, "teacher": jax.lax.stop_gradient(teacher(frozen, images))}

  def objective(params):
    if forward is None:
      outputs = model.apply(params, images, train=True, rngs={"dropout": dropout_rng}, **(apply_kwargs or {}))
    else:
      outputs = forward(params, images, dropout_rng)
    return loss_fn(outputs, batch)

  (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
  state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  if ema_decay:
    state = state.replace(ema_params=optim.ema_update(state.ema_params, params, ema_decay))
  return state, metrics


def make_train_step(**kwargs: Any) -> Callable[..., tuple[TrainState, Metrics]]:
  """train_step with its static arguments (model, tx, schedule, ...) bound, ready for jax.jit.

  (state, batch) -> (state, metrics); with a `teacher`, (state, batch, frozen) -> (state, metrics).
  """
  if kwargs.get("teacher") is not None:
    return lambda state, batch, frozen: train_step(state, batch, frozen, **kwargs)
  return lambda state, batch: train_step(state, batch, **kwargs)
