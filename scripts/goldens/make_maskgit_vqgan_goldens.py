"""Goldens: maskgit's Flax VQGAN Encoder / Decoder on numpy-drawn weights (tests/golden/maskgit_vqgan.*).

  python scripts/goldens/make_maskgit_vqgan_goldens.py --maskgit /tmp/maskgit

`--maskgit` is a google-research/maskgit checkout (git -C <mirror> archive 1db2359 | tar -x -C
/tmp/maskgit). Two configurations, filters 32, one res block, GroupNorm(32), swish, 8x8 inputs:
  same:    channel_multipliers [1, 1]: no block changes channels, so maskgit's ResBlock shortcut
           bug (the 1x1 conv applied to the block output) never runs; tokax must match exactly.
  changes: channel_multipliers [1, 2]: the bug runs; tokax (shortcut on the block input) differs
           and the test asserts it does, by how much.
Weights: for every parameter in sorted maskgit path order, one numpy draw from default_rng(seed):
kernels normal / sqrt(fan_in), GroupNorm scales 1 + 0.1 normal, biases 0.1 normal (the test redraws
them from the path list in the JSON). npz keys: {name}_x (2, 8, 8, 3), {name}_z (encoder output),
{name}_out (decoder output of z).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "golden"
CONFIGS = {"same": [1, 1], "changes": [1, 2]}


def draw_params(paths_and_shapes: list[tuple[str, list[int]]], seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  out = {}
  for path, shape in sorted(paths_and_shapes):
    normal = rng.standard_normal(shape)
    if path.endswith("kernel"):
      out[path] = (normal / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
    elif path.endswith("scale"):
      out[path] = (1.0 + 0.1 * normal).astype(np.float32)
    else:
      out[path] = (0.1 * normal).astype(np.float32)
  return out


def _flat(tree) -> list[tuple[str, list[int]]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [("/".join(k.key for k in path), list(leaf.shape)) for path, leaf in leaves]


def _unflat(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(value)
  return tree


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--maskgit", required=True)
  args = parser.parse_args()
  sys.path.insert(0, args.maskgit)
  from maskgit.nets.vqgan_tokenizer import Decoder, Encoder

  arrays, meta = {}, {"repository": "google-research/maskgit", "files": ["maskgit/nets/vqgan_tokenizer.py",
                                                                          "maskgit/nets/layers.py"],
                      "command": "python scripts/goldens/make_maskgit_vqgan_goldens.py --maskgit DIR", "configs": {}}
  try:
    meta["commit"] = subprocess.run(["git", "-C", args.maskgit, "rev-parse", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() or "1db23594e1bd328ee78eadcd148a19281cd0f5b8"
  except OSError:
    meta["commit"] = "1db23594e1bd328ee78eadcd148a19281cd0f5b8"
  for i, (name, mults) in enumerate(CONFIGS.items()):
    config = ml_collections.ConfigDict({"vqvae": dict(
        filters=32, num_res_blocks=1, channel_multipliers=mults, embedding_dim=4, conv_downsample=False,
        norm_type="GN", activation_fn="swish")})
    encoder, decoder = Encoder(config=config, train=False), Decoder(config=config, train=False)
    x = np.random.default_rng(100 + i).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    enc_paths = _flat(jax.eval_shape(encoder.init, jax.random.key(0), x)["params"])
    enc_params = draw_params(enc_paths, seed=10 + i)
    z = encoder.apply({"params": _unflat(enc_params)}, x)
    dec_paths = _flat(jax.eval_shape(decoder.init, jax.random.key(0), z)["params"])
    dec_params = draw_params(dec_paths, seed=20 + i)
    out = decoder.apply({"params": _unflat(dec_params)}, z)
    arrays.update({f"{name}_x": x, f"{name}_z": np.asarray(z), f"{name}_out": np.asarray(out)})
    meta["configs"][name] = {"channel_multipliers": mults, "encoder_seed": 10 + i, "decoder_seed": 20 + i,
                             "encoder_params": enc_paths, "decoder_params": dec_paths}
  meta["versions"] = {"jax": jax.__version__, "flax": __import__("flax").__version__}
  np.savez_compressed(OUT / "maskgit_vqgan.npz", **arrays)
  (OUT / "maskgit_vqgan.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
  main()
