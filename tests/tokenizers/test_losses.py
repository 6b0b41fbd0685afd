"""GAN losses, the adaptive weight and the PatchGAN: closed forms in float64 numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizer_doubles import random_variables

from tokax.tokenizers import losses

RNG = np.random.default_rng(0)


def test_hinge_and_non_saturating_values():
  real, fake = RNG.normal(size=(2, 3, 3, 1)) * 2, RNG.normal(size=(2, 3, 3, 1)) * 2
  softplus = lambda v: np.log1p(np.exp(v))
  np.testing.assert_allclose(losses.discriminator_loss(real, fake, "hinge"),
                             0.5 * (np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean()), rtol=1e-6)
  np.testing.assert_allclose(losses.discriminator_loss(real, fake, "non_saturating"),
                             0.5 * (softplus(-real).mean() + softplus(fake).mean()), rtol=1e-6)
  np.testing.assert_allclose(losses.generator_loss(fake, "hinge"), -fake.mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.generator_loss(fake, "non_saturating"), softplus(-fake).mean(), rtol=1e-6)
  with pytest.raises(ValueError, match="kind"):
    losses.generator_loss(fake, "wgan")


def test_reconstruction_losses():
  x, y = RNG.uniform(-1, 1, (2, 4, 4, 3)), RNG.uniform(-1, 1, (2, 4, 4, 3))
  np.testing.assert_allclose(losses.reconstruction_loss(x, y, "l1"), np.abs(x - y).mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.reconstruction_loss(x, y, "l2"), np.square(x - y).mean(), rtol=1e-6)
  with pytest.raises(ValueError, match="kind"):
    losses.reconstruction_loss(x, y, "l3")


def test_adaptive_weight_on_a_linear_decoder():
  """recon = h W, nll = mean((recon - x)^2), D(r) = r . v per row, g = -mean D: grads in closed form."""
  n, c, o = 6, 5, 3
  h, w, x, v = RNG.normal(size=(n, c)), RNG.normal(size=(c, o)), RNG.normal(size=(n, o)), RNG.normal(size=(o,))
  nll_of = lambda r: jnp.mean(jnp.square(r - x))
  gan_of = lambda r: losses.generator_loss(r @ v, "hinge")
  layer = lambda kernel, feats: feats @ kernel
  nll_grad = losses.last_layer_grad(nll_of, layer, jnp.asarray(w, jnp.float32), jnp.asarray(h, jnp.float32))
  gan_grad = losses.last_layer_grad(gan_of, layer, jnp.asarray(w, jnp.float32), jnp.asarray(h, jnp.float32))
  expected_nll_grad = h.T @ (2.0 * (h @ w - x) / (n * o))
  expected_gan_grad = -np.outer(h.sum(0), v) / n
  np.testing.assert_allclose(nll_grad, expected_nll_grad, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gan_grad, expected_gan_grad, rtol=1e-5, atol=1e-6)
  weight = losses.adaptive_weight(nll_grad, gan_grad, disc_weight=0.8)
  expected = np.linalg.norm(expected_nll_grad) / (np.linalg.norm(expected_gan_grad) + 1e-4) * 0.8
  np.testing.assert_allclose(weight, expected, rtol=1e-5)
  # clipped at max_weight, and no gradient flows through it
  assert float(losses.adaptive_weight(nll_grad, 0.0 * gan_grad, max_weight=1e4)) == pytest.approx(1e4)
  grad = jax.grad(lambda s: losses.adaptive_weight(s * nll_grad, gan_grad))(1.0)
  assert float(grad) == 0.0


def test_adopt_weight_and_r1():
  assert float(losses.adopt_weight(jnp.int32(4), 5)) == 0.0 and float(losses.adopt_weight(jnp.int32(5), 5)) == 1.0
  a = RNG.normal(size=(4, 4, 3))
  x = RNG.normal(size=(2, 4, 4, 3))
  # D(x) = sum(a * x^2): grad = 2 a x, R1 = mean_b sum (2 a x)^2
  penalty = losses.r1_penalty(lambda im: jnp.sum(a * im ** 2, axis=(1, 2, 3)), jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(penalty, np.mean(np.sum((2 * a * x) ** 2, axis=(1, 2, 3))), rtol=1e-5)


def test_patchgan_shapes_and_errors():
  disc = losses.NLayerDiscriminator(ndf=8, num_layers=2, norm_groups=4)
  x = jnp.asarray(RNG.uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  params = random_variables(disc, x)
  # 32 -> 16 -> 8 (strided) -> 7 -> 6 (4x4, stride 1, padding 1): taming's receptive-field layout
  assert disc.apply(params, x).shape == (2, 6, 6, 1)
  with pytest.raises(ValueError, match="norm_groups"):
    jax.eval_shape(losses.NLayerDiscriminator(ndf=6, norm_groups=4).init, jax.random.key(0), x)


def test_perceptual_spec_errors():
  with pytest.raises(ValueError, match="module:factory"):
    losses.load_perceptual_fn("no_colon")
