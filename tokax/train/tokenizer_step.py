"""The tokenizer train state and step: autoencoder + quantizer (+ PatchGAN discriminator), weight EMA.

The generator and the discriminator are updated simultaneously from one forward pass (as magvit's
train_g_d): the generator's GAN term uses the discriminator before this step's update, and the
discriminator sees this step's reconstructions. tokax.train.run jits the step with shardings and
donation (tasks/tokenizer.py builds it).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from tokax.tokenizers import losses
from tokax.tokenizers.autoencoder import output_conv
from tokax.tokenizers.tokenizer import to_image_range, to_model_range
from tokax.train import optim

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
MUTABLE = ("quantizer_state",)  # collections the forward pass updates in training


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The generator objective: reconstruction + perceptual + lambda * GAN + aux (quantizer or KL).

  Attributes:
    reconstruction: "l1" (taming) or "l2" (MaskGIT).
    gan: "none", "hinge" (taming) or "non_saturating" (MaskGIT).
    disc_weight: taming's disc_weight (0.8) with the adaptive weight; the GAN weight itself without.
    adaptive_weight: scale the GAN term by ||grad nll|| / ||grad gan|| at the decoder's last layer.
    disc_start: step from which the GAN terms (generator and discriminator) are on.
    perceptual_weight: weight of the user-supplied perceptual loss (0: off).
    r1_weight: R1 gradient penalty on real images in the discriminator loss (MaskGIT: 10; 0: off).
  """
  reconstruction: str = "l1"
  gan: str = "none"
  disc_weight: float = 0.8
  adaptive_weight: bool = True
  disc_start: int = 0
  perceptual_weight: float = 0.0
  r1_weight: float = 0.0

  def __post_init__(self):
    if self.reconstruction not in losses.RECONSTRUCTION_LOSSES:
      raise ValueError(f"loss.reconstruction must be one of {losses.RECONSTRUCTION_LOSSES}; got {self.reconstruction!r}")
    if self.gan not in ("none",) + losses.GAN_LOSSES:
      raise ValueError(f"loss.gan must be 'none' or one of {losses.GAN_LOSSES}; got {self.gan!r}")
    if self.disc_start < 0 or self.disc_weight < 0 or self.perceptual_weight < 0 or self.r1_weight < 0:
      raise ValueError("loss: disc_start, disc_weight, perceptual_weight and r1_weight must be >= 0; got "
                       f"{self.disc_start}, {self.disc_weight}, {self.perceptual_weight}, {self.r1_weight}")

  @property
  def use_gan(self) -> bool:
    return self.gan != "none"


@flax.struct.dataclass
class TokenizerState:
  """Everything a tokenizer step updates; one pytree, so it shards, donates and checkpoints as one.

  Attributes:
    step: () int32, updates applied.
    params: the autoencoder's (and quantizer's) trainable parameters ({"encoder": ..., ...}).
    model_state: the other variable collections ({"quantizer_state": ..., "stats": ...}; may be {}).
    opt_state: the generator optimizer's state.
    ema_params: exponential moving average of params (what evaluation uses).
    disc_params: the discriminator's parameters ({} without a GAN).
    disc_opt_state: its optimizer's state.
    rng: raw key data (jax.random.key_data) of the steps' base key; step s folds in s, so a restored
      state draws the same posterior samples.
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  ema_params: Any
  disc_params: Any
  disc_opt_state: Any
  rng: jax.Array

  def variables(self, *, ema: bool = True) -> dict:
    """The model's variables for apply: EMA (or raw) params and the current state collections."""
    return {"params": self.ema_params if ema else self.params, **self.model_state}


def init_state(model: nn.Module, discriminator: nn.Module | None, g_tx: optax.GradientTransformation,
               d_tx: optax.GradientTransformation, rng: jax.Array, image_shape: tuple[int, ...],
               step_rng: jax.Array) -> TokenizerState:
  """Initial state for images of shape (H, W, 3); jit it with out_shardings to create it in place.

  `rng` initialises the parameters; `step_rng` is the base key of the steps (stored in the state).
  """
  model_rng, sample_rng, disc_rng = jax.random.split(rng, 3)
  images = jnp.full((1, *image_shape), 0.5, jnp.float32)
  variables = dict(model.init({"params": model_rng, "sample": sample_rng}, images, train=False))
  params = variables.pop("params")
  disc_params = discriminator.init(disc_rng, images) if discriminator is not None else {}
  return TokenizerState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=variables, opt_state=g_tx.init(params),
      ema_params=params, disc_params=disc_params,
      disc_opt_state=d_tx.init(disc_params) if discriminator is not None else {},
      rng=jax.random.key_data(step_rng))


def _psnr(images: jax.Array, reconstructions: jax.Array) -> jax.Array:
  """Mean over the batch of -10 log10(MSE) of images in [0, 1] (reconstructions clipped). () float32."""
  mse = jnp.mean(jnp.square(jnp.clip(reconstructions, 0.0, 1.0) - images), axis=(1, 2, 3))
  return jnp.mean(-10.0 * jnp.log10(jnp.maximum(mse, 1e-10)))


def train_step(state: TokenizerState, batch: Batch, *, model: nn.Module,
               discriminator: nn.Module | None, g_tx: optax.GradientTransformation,
               d_tx: optax.GradientTransformation, schedule: optax.Schedule, loss: LossConfig,
               ema_decay: float, perceptual_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
               ) -> tuple[TokenizerState, Metrics]:
  """One generator (and discriminator) update on a batch.

  Args:
    state: the current state.
    batch: {"image": (B, H, W, 3) float32 in [0, 1]}.
    model: a Tokenizer or KLAutoencoder (returns TokenizerOutput).
    discriminator: the PatchGAN (None without a GAN).
    g_tx, d_tx, schedule: the optimizers and the generator's lr schedule (for logging).
    loss: the objective.
    ema_decay: decay of the weight EMA (0: ema_params = params).
    perceptual_fn: fn(x, y) -> () on [-1, 1] images, required when loss.perceptual_weight > 0.

  Returns:
    the new state and scalar metrics (loss, rec_loss, aux_loss, psnr, lr, grad_norm, GAN terms,
    and the model's own metrics under "model/").
  """
  if loss.perceptual_weight and perceptual_fn is None:
    raise ValueError("loss.perceptual_weight > 0 needs a perceptual_fn (config.loss.perceptual='module:factory')")
  if loss.use_gan != (discriminator is not None):
    raise ValueError(f"loss.gan={loss.gan!r} needs a discriminator exactly when it is not 'none'")
  rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  images = batch["image"].astype(jnp.float32)
  x = to_model_range(images)
  gan_factor = losses.adopt_weight(state.step, loss.disc_start) if loss.use_gan else jnp.float32(0.0)

  def nll_of(reconstruction):
    value = losses.reconstruction_loss(x, reconstruction, loss.reconstruction)
    if loss.perceptual_weight:
      value = value + loss.perceptual_weight * jnp.asarray(perceptual_fn(x, reconstruction), jnp.float32)
    return value

  def generator_loss_fn(params):
    out, updates = model.apply({"params": params, **state.model_state}, images, train=True,
                               rngs={"sample": rng}, mutable=list(MUTABLE))
    nll = nll_of(out.reconstruction)
    total = nll + out.loss
    metrics = {"rec_loss": nll, "aux_loss": out.loss}
    if loss.use_gan:
      fake_logits = discriminator.apply(state.disc_params, out.reconstruction)
      g_loss = losses.generator_loss(fake_logits, loss.gan)
      weight = jnp.float32(loss.disc_weight)
      if loss.adaptive_weight:
        weight = _adaptive_weight(params, out.features, nll_of, lambda r: losses.generator_loss(
            discriminator.apply(state.disc_params, r), loss.gan), model, loss.disc_weight)
      total = total + weight * gan_factor * g_loss
      metrics.update(g_loss=g_loss, gan_weight=weight * gan_factor)
    return total, (out, updates, metrics)

  (total, (out, updates, metrics)), grads = jax.value_and_grad(generator_loss_fn, has_aux=True)(state.params)
  g_updates, opt_state = g_tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, g_updates)
  model_state = {**state.model_state, **updates}
  ema_params = optim.ema_update(state.ema_params, params, ema_decay)

  disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
  if loss.use_gan:
    fake = jax.lax.stop_gradient(out.reconstruction)

    def discriminator_loss_fn(d_params):
      apply = lambda images_: discriminator.apply(d_params, images_)
      real_logits, fake_logits = apply(x), apply(fake)
      d_loss = losses.discriminator_loss(real_logits, fake_logits, loss.gan)
      if loss.r1_weight:
        d_loss = d_loss + loss.r1_weight * losses.r1_penalty(apply, x)
      return gan_factor * d_loss, (d_loss, jnp.mean(real_logits), jnp.mean(fake_logits))

    (_, (d_loss, real_mean, fake_mean)), d_grads = jax.value_and_grad(
        discriminator_loss_fn, has_aux=True)(state.disc_params)
    d_updates, disc_opt_state = d_tx.update(d_grads, state.disc_opt_state, state.disc_params)
    disc_params = optax.apply_updates(state.disc_params, d_updates)
    metrics.update(d_loss=d_loss, logits_real=real_mean, logits_fake=fake_mean)

  metrics.update(
      loss=total, psnr=_psnr(images, to_image_range(out.reconstruction)), grad_norm=optax.tree.norm(grads),
      lr=schedule(state.step), **{f"model/{k}": v for k, v in out.metrics.items()})
  new_state = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state,
                            ema_params=ema_params, disc_params=disc_params, disc_opt_state=disc_opt_state)
  return new_state, metrics


def _adaptive_weight(params, features, nll_of, gan_of, model: nn.Module, disc_weight: float) -> jax.Array:
  """VQGAN's lambda from the gradients of nll and the GAN loss wrt the decoder's last conv kernel."""
  conv_out = jax.lax.stop_gradient(params["decoder"]["conv_out"])
  features = jax.lax.stop_gradient(features)
  layer = output_conv(3, model.dtype, model.param_dtype)
  apply_kernel = lambda kernel, f: layer.apply({"params": {**conv_out, "kernel": kernel}}, f).astype(jnp.float32)
  nll_grad = losses.last_layer_grad(nll_of, apply_kernel, conv_out["kernel"], features)
  gan_grad = losses.last_layer_grad(gan_of, apply_kernel, conv_out["kernel"], features)
  return losses.adaptive_weight(nll_grad, gan_grad, disc_weight=disc_weight)


def make_train_step(**kwargs: Any) -> Callable[[TokenizerState, Batch], tuple[TokenizerState, Metrics]]:
  """train_step with its static arguments bound, ready for jax.jit (run.jit_train_step)."""
  return lambda state, batch: train_step(state, batch, **kwargs)
