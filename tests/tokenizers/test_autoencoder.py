"""Encoder / decoder: the residual shortcut takes the block input, shapes, dtypes and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizer_doubles import random_variables

from tokax.tokenizers import autoencoder
from tokax.tokenizers.autoencoder import Decoder, Encoder, ResBlock

RNG = np.random.default_rng(1)


def test_shortcut_is_applied_to_the_block_input():
  """With the main branch's last conv zeroed, the block is exactly the 1x1 shortcut of its *input*
  (maskgit's block would give conv1x1(0) = 0 here)."""
  block = ResBlock(filters=8, norm_groups=4)
  x = jnp.asarray(RNG.normal(size=(2, 5, 5, 4)), jnp.float32)
  params = random_variables(block, x)
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.zeros_like(p) if "Conv_1" in jax.tree_util.keystr(path) else p, params)
  shortcut = np.asarray(params["params"]["Conv_2"]["kernel"])[0, 0]  # (4, 8)
  np.testing.assert_allclose(block.apply(params, x), np.einsum("bhwc,cd->bhwd", np.asarray(x), shortcut),
                             rtol=1e-5, atol=1e-6)


def test_resample_helpers_match_maskgit_ops():
  x = jnp.asarray(RNG.normal(size=(2, 6, 4, 3)), jnp.float32)
  pooled = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "SAME") / 4.0
  np.testing.assert_allclose(autoencoder.avg_pool_2x2(x), pooled, rtol=1e-6)
  np.testing.assert_allclose(autoencoder.upsample_nearest_2x(x), jax.image.resize(x, (2, 12, 8, 3), "nearest"))


@pytest.fixture(scope="module")
def encoder_decoder():
  arch = dict(filters=8, channel_multipliers=(1, 2, 2), num_res_blocks=1, norm_groups=4)
  encoder, decoder = Encoder(z_channels=5, **arch), Decoder(out_channels=3, **arch)
  x = jnp.asarray(RNG.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  enc_params = random_variables(encoder, x)
  z = encoder.apply(enc_params, x)
  dec_params = random_variables(decoder, z, seed=1)
  return encoder, decoder, enc_params, dec_params, x, z


def test_shapes_downsampling_and_features(encoder_decoder):
  encoder, decoder, enc_params, dec_params, x, z = encoder_decoder
  assert autoencoder.downsample_factor((1, 2, 2)) == 4
  assert z.shape == (2, 4, 4, 5)
  out, features = decoder.apply(dec_params, z, return_features=True)
  assert out.shape == (2, 16, 16, 3) and features.shape == (2, 16, 16, 8)
  conv = autoencoder.output_conv(3).apply({"params": dec_params["params"]["conv_out"]}, features)
  np.testing.assert_allclose(conv, out, rtol=1e-5, atol=1e-6)
  # bfloat16 compute keeps float32 params and stays close to the float32 result
  z16 = encoder.clone(dtype=jnp.bfloat16).apply(enc_params, x)
  assert z16.dtype == jnp.bfloat16 and all(p.dtype == jnp.float32 for p in jax.tree.leaves(enc_params))
  np.testing.assert_allclose(np.asarray(z16, np.float32), z, atol=0.1 * float(jnp.std(z)))


def test_bad_architecture_and_shapes(encoder_decoder):
  encoder, _, enc_params, _, x, _ = encoder_decoder
  with pytest.raises(ValueError, match="multiples of the downsampling factor 4"):
    encoder.apply(enc_params, x[:, :14, :14])
  with pytest.raises(ValueError, match="norm_groups=4 must divide"):
    jax.eval_shape(Encoder(filters=6, channel_multipliers=(1,), norm_groups=4).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match="channel_multipliers"):
    jax.eval_shape(Encoder(filters=8, channel_multipliers=(), norm_groups=4).init, jax.random.key(0), x)
