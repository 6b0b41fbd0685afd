"""Tokenizer (encoder -> quantizer -> decoder) with the real FSQ, the quantizer registry, and the KL autoencoder."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizer_doubles import random_variables

from tokax.tokenizers import quantizers
from tokax.tokenizers import tokenizer as tokenizer_lib
from tokax.tokenizers.tokenizer import Tokenizer
from tokax.tokenizers.vae import KLAutoencoder, latent_scale_from, with_latent_scale

RNG = np.random.default_rng(2)
ARCH = dict(filters=8, channel_multipliers=(1, 2), num_res_blocks=1, z_channels=8, norm_groups=4)
IMAGES = jnp.asarray(RNG.uniform(0, 1, (3, 8, 8, 3)), jnp.float32)


@pytest.fixture(scope="module")
def tokenizer():
  model = Tokenizer(quantizer=tokenizer_lib.build_quantizer("fsq", latent_dim=2, levels=(5, 3)), latent_dim=2, **ARCH)
  return model, random_variables(model, IMAGES)


def test_tokenizer_round_trip(tokenizer):
  model, variables = tokenizer

  @jax.jit
  def run(variables, images):
    out, updates = model.apply(variables, images, train=True, mutable=["quantizer_state"])
    codes = model.apply(variables, images, method=Tokenizer.encode)
    return out, updates, codes, model.apply(variables, codes, method=Tokenizer.decode)  # codes -> latent -> image

  out, updates, codes, decoded = run(variables, IMAGES)
  assert out.reconstruction.shape == IMAGES.shape and out.codes.shape == (3, 4, 4)
  assert not updates.get("quantizer_state")  # FSQ keeps no state
  assert int(codes.min()) >= 0 and int(codes.max()) <= 14
  np.testing.assert_array_equal(codes, out.codes)
  np.testing.assert_allclose(decoded, (out.reconstruction + 1) / 2, rtol=1e-5, atol=1e-5)


def test_registry_names_and_errors():
  assert {name: tokenizer_lib.quantizer_class(name) for name in tokenizer_lib.QUANTIZERS} == {
      "vq": quantizers.VectorQuantizer, "vq_ema": quantizers.VectorQuantizerEMA, "fsq": quantizers.FSQ,
      "lfq": quantizers.LFQ, "kl": quantizers.DiagonalGaussian}
  assert tokenizer_lib.quantizer_class("tokax.tokenizers.quantizers:FSQ") is quantizers.FSQ
  vq = tokenizer_lib.build_quantizer("vq_ema", latent_dim=6, codebook_size=16, eps=1e-4)
  assert (vq.dim, vq.codebook_size, vq.eps) == (6, 16, 1e-4)  # dim follows latent_dim
  with pytest.raises(ValueError, match="unknown name 'vqq'"):
    tokenizer_lib.quantizer_class("vqq")
  with pytest.raises(ValueError, match="has no 'Nope'"):
    tokenizer_lib.quantizer_class("tokax.tokenizers.quantizers:Nope")
  with pytest.raises(ValueError, match=r"VectorQuantizerEMA has no field\(s\) \['epsilon'\]"):
    tokenizer_lib.build_quantizer("vq_ema", latent_dim=6, codebook_size=16, epsilon=1e-5)
  with pytest.raises(ValueError, match="dim=4 differs from latent_dim=6"):
    tokenizer_lib.build_quantizer("lfq", latent_dim=6, dim=4)
  with pytest.raises(ValueError, match="latent_dim=2; set latent_dim to len"):
    tokenizer_lib.build_quantizer("fsq", latent_dim=2, levels=(8, 6, 5))


@pytest.mark.parametrize("images, message", [
    (IMAGES * 255, r"\[0, 255\]: divide by 255"), (IMAGES * 2 - 1, r"\[-1, 1\]"),
    (np.zeros((2, 8, 8, 3), np.uint8), "floating point"), (IMAGES[..., :1], r"\(B, H, W, 3\)")])
def test_images_outside_the_range_are_rejected(tokenizer, images, message):
  model, variables = tokenizer
  with pytest.raises(ValueError, match=message):
    model.apply(variables, images, method=Tokenizer.encode)


def test_kl_autoencoder_latent_scale_and_decode():
  model = KLAutoencoder(latent_channels=3, kl_weight=1e-3, **ARCH)
  variables = random_variables(model, IMAGES)
  out = model.apply(variables, IMAGES, train=True, rngs={"sample": jax.random.key(0)})
  mean, logvar = (np.asarray(x, np.float64) for x in model.apply(variables, IMAGES, method=KLAutoencoder.posterior))
  kl = 0.5 * np.sum(mean**2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3))  # per image
  np.testing.assert_allclose(out.loss, 1e-3 * np.mean(kl) / (8 * 8 * 3), rtol=1e-5)
  scaled = with_latent_scale(model, variables, IMAGES)
  scale = float(scaled["stats"]["latent_scale"])
  np.testing.assert_allclose(scale, 1.0 / np.std(mean), rtol=1e-5)
  latents = model.apply(scaled, IMAGES, method=KLAutoencoder.encode)
  assert latents.shape == (3, 4, 4, 3)
  np.testing.assert_allclose(np.std(np.asarray(latents)), 1.0, rtol=1e-4)  # unit std for the generator
  eval_out = model.apply(variables, IMAGES, train=False)
  np.testing.assert_allclose(model.apply(scaled, latents, method=KLAutoencoder.decode),
                             (eval_out.reconstruction + 1) / 2, rtol=1e-4, atol=1e-5)
  assert float(latent_scale_from(jnp.asarray([1.0, 3.0]))) == pytest.approx(1.0)
