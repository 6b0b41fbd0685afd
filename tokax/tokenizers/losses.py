"""Tokenizer losses: reconstruction, PatchGAN discriminator, GAN losses, the VQGAN adaptive weight.

Images here are in the model's range [-1, 1], NHWC. The GAN losses follow taming-transformers
(`vqperceptual.py`): the discriminator loss carries a factor 0.5 for both hinge and
non-saturating ("vanilla") losses, and the generator's GAN term is scaled by the adaptive weight
lambda = ||grad_W nll|| / (||grad_W g_loss|| + 1e-4), clipped to [0, 1e4], detached, times
disc_weight, where W is the decoder's last layer; both are zero before `disc_start`.

Perceptual loss: no feature network ships with tokax (there is no network access to fetch LPIPS,
VGG or ResNet weights). `load_perceptual_fn("module:attr")` imports a user factory that returns
fn(x, y) -> scalar with the user's own weights; the default configs train without it.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any
PerceptualFn = Callable[[Array, Array], Array]

GAN_LOSSES: tuple[str, ...] = ("hinge", "non_saturating")
RECONSTRUCTION_LOSSES: tuple[str, ...] = ("l1", "l2")


def reconstruction_loss(images: Array, reconstructions: Array, kind: str = "l1") -> Array:
  """Mean absolute ("l1") or squared ("l2") error over every pixel, float32.

  Args:
    images, reconstructions: (B, H, W, C).
    kind: one of RECONSTRUCTION_LOSSES.

  Returns:
    () float32.
  """
  if kind not in RECONSTRUCTION_LOSSES:
    raise ValueError(f"reconstruction_loss: kind must be one of {RECONSTRUCTION_LOSSES}; got {kind!r}")
  diff = reconstructions.astype(jnp.float32) - images.astype(jnp.float32)
  return jnp.mean(jnp.abs(diff)) if kind == "l1" else jnp.mean(jnp.square(diff))


def discriminator_loss(real_logits: Array, fake_logits: Array, kind: str = "hinge") -> Array:
  """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) for "hinge";
  0.5 * (mean softplus(-D(x)) + mean softplus(D(x_hat))) for "non_saturating" (sigmoid cross-entropy).

  Args:
    real_logits, fake_logits: discriminator outputs, any shapes (PatchGAN: (B, h, w, 1)).

  Returns:
    () float32.
  """
  real, fake = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
  if kind == "hinge":
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))
  if kind == "non_saturating":
    return 0.5 * (jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake)))
  raise ValueError(f"discriminator_loss: kind must be one of {GAN_LOSSES}; got {kind!r}")


def generator_loss(fake_logits: Array, kind: str = "hinge") -> Array:
  """-mean D(x_hat) for "hinge" (taming); mean softplus(-D(x_hat)) for "non_saturating" (MaskGIT). () float32."""
  fake = fake_logits.astype(jnp.float32)
  if kind == "hinge":
    return -jnp.mean(fake)
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake))
  raise ValueError(f"generator_loss: kind must be one of {GAN_LOSSES}; got {kind!r}")


def adaptive_weight(nll_grad: Any, gan_grad: Any, *, disc_weight: float = 1.0, max_weight: float = 1e4,
                    eps: float = 1e-4) -> Array:
  """VQGAN's lambda: ||nll_grad|| / (||gan_grad|| + eps), clipped to [0, max_weight], detached, x disc_weight.

  Args:
    nll_grad, gan_grad: gradients (arrays or pytrees) of the reconstruction and the generator GAN
      loss with respect to the decoder's last layer.

  Returns:
    () float32.
  """
  norm = lambda tree: jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(tree)))
  weight = jnp.clip(norm(nll_grad) / (norm(gan_grad) + eps), 0.0, max_weight)
  return jax.lax.stop_gradient(weight) * disc_weight


def adopt_weight(step: Array, start: int, value: float = 1.0) -> Array:
  """`value` from step `start` on and 0 before (taming's disc_factor). () float32."""
  return jnp.where(step >= start, jnp.float32(value), jnp.float32(0.0))


def last_layer_grad(loss_of_output: Callable[[Array], Array], output_layer: Callable[[Any, Array], Array],
                    layer_params: Any, features: Array) -> Any:
  """Gradient of loss(output_layer(layer_params, features)) with respect to layer_params.

  Used for the adaptive weight: with the decoder's last-conv input `features` known, this costs one
  backward pass of `loss_of_output` and one of the last layer, not of the whole decoder.
  """
  return jax.grad(lambda p: loss_of_output(output_layer(p, features)))(layer_params)


def r1_penalty(discriminator_fn: Callable[[Array], Array], real_images: Array) -> Array:
  """mean_b ||grad_x sum D(x_b)||^2 over real images (MaskGIT's gradient_penalty "r1"). () float32."""
  grads = jax.grad(lambda x: jnp.sum(discriminator_fn(x).astype(jnp.float32)))(real_images)
  return jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=tuple(range(1, grads.ndim))))


class NLayerDiscriminator(nn.Module):
  """PatchGAN discriminator (taming's NLayerDiscriminator): (B, H, W, C) -> (B, H', W', 1) logits.

  conv4x4/2(ndf) -> leaky_relu(0.2) -> for n in 1..num_layers-1: conv4x4/2(ndf*min(2^n, 8)) -> norm
  -> leaky -> conv4x4/1(ndf*min(2^num_layers, 8)) -> norm -> leaky -> conv4x4/1(1). Padding 1.
  Normalisation is GroupNorm (stateless; taming uses BatchNorm, which would add running
  statistics to the train state) or none.

  Attributes:
    ndf: channels of the first layer (taming: 64).
    num_layers: strided layers (taming: 3). Inputs need H, W >= 2^num_layers * 2 or so.
    norm: "group" or "none".
    norm_groups: GroupNorm groups (must divide ndf).
  """
  ndf: int = 64
  num_layers: int = 3
  norm: str = "group"
  norm_groups: int = 32
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.norm not in ("group", "none"):
      raise ValueError(f"NLayerDiscriminator.norm must be 'group' or 'none'; got {self.norm!r}")
    if self.norm == "group" and self.ndf % self.norm_groups:
      raise ValueError(f"NLayerDiscriminator.norm_groups={self.norm_groups} must divide ndf={self.ndf}")
    conv = lambda feats, stride: nn.Conv(feats, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
                                         dtype=self.dtype, param_dtype=self.param_dtype)
    act = lambda h: nn.leaky_relu(h, 0.2)

    def normed(h):
      if self.norm == "none":
        return h
      return nn.GroupNorm(num_groups=self.norm_groups, epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype)(h)

    h = act(conv(self.ndf, 2)(x.astype(self.dtype)))
    for n in range(1, self.num_layers):
      h = act(normed(conv(self.ndf * min(2 ** n, 8), 2)(h)))
    h = act(normed(conv(self.ndf * min(2 ** self.num_layers, 8), 1)(h)))
    return conv(1, 1)(h)


def load_perceptual_fn(spec: str) -> PerceptualFn:
  """Imports "package.module:factory" and returns factory(): fn(x, y) -> () float32 perceptual distance.

  The factory loads the user's own feature-network weights (LPIPS, a ResNet, ...); x and y are
  (B, H, W, 3) in [-1, 1]. tokax ships no such weights.
  """
  module_name, sep, attr = spec.partition(":")
  if not sep or not module_name or not attr:
    raise ValueError(f"perceptual loss: expected 'package.module:factory'; got {spec!r}")
  factory = getattr(importlib.import_module(module_name), attr)
  fn = factory()
  if not callable(fn):
    raise ValueError(f"perceptual loss: {spec}() must return a callable fn(x, y) -> scalar; got {type(fn).__name__}")
  return fn
