"""Encoder / Decoder against maskgit's Flax VQGAN (goldens from scripts/goldens/make_maskgit_vqgan_goldens.py)."""
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from tokax.tokenizers.autoencoder import Decoder, Encoder

GOLDEN = pathlib.Path(__file__).resolve().parents[1] / "golden"
_spec = importlib.util.spec_from_file_location(
    "make_maskgit_vqgan_goldens", GOLDEN.parents[1] / "scripts" / "goldens" / "make_maskgit_vqgan_goldens.py")
generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generator)
META = json.loads((GOLDEN / "maskgit_vqgan.json").read_text())
ARRAYS = np.load(GOLDEN / "maskgit_vqgan.npz")


def _tokax_params(paths, seed, *, rename_last_conv):
  flat = generator.draw_params([(p, s) for p, s in paths], seed)
  if rename_last_conv:  # maskgit's decoder ends in Conv_<last>; tokax names it conv_out
    last = max(int(p.split("/")[0][5:]) for p in flat if p.startswith("Conv_"))
    flat = {p.replace(f"Conv_{last}/", "conv_out/") if p.startswith(f"Conv_{last}/") else p: v for p, v in flat.items()}
  return {"params": generator._unflat(flat)}


def test_matches_maskgit_where_no_block_changes_channels():
  meta = META["configs"]["same"]
  arch = dict(filters=32, channel_multipliers=tuple(meta["channel_multipliers"]), num_res_blocks=1, norm_groups=32)
  x = ARRAYS["same_x"]
  z = jax.jit(Encoder(z_channels=4, **arch).apply)(
      _tokax_params(meta["encoder_params"], meta["encoder_seed"], rename_last_conv=False), jnp.asarray(x))
  np.testing.assert_allclose(z, ARRAYS["same_z"], rtol=1e-4, atol=1e-5)
  out = jax.jit(Decoder(out_channels=3, **arch).apply)(
      _tokax_params(meta["decoder_params"], meta["decoder_seed"], rename_last_conv=True), jnp.asarray(ARRAYS["same_z"]))
  np.testing.assert_allclose(out, ARRAYS["same_out"], rtol=1e-4, atol=1e-5)


def test_maskgit_shortcut_reads_the_block_output_where_channels_change():
  """maskgit's 32 -> 64 block projects its own 64-channel output (kernel 1x1x64x64); tokax's projects the
  32-channel input (1x1x32x64), so the shortcut is a real residual."""
  shapes = dict((p, s) for p, s in META["configs"]["changes"]["encoder_params"])
  assert shapes["ResBlock_1/Conv_2/kernel"] == [1, 1, 64, 64]
  ours = jax.eval_shape(Encoder(filters=32, channel_multipliers=(1, 2), num_res_blocks=1, z_channels=4).init,
                        jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  assert ours["params"]["ResBlock_1"]["Conv_2"]["kernel"].shape == (1, 1, 32, 64)
