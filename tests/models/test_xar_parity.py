"""xAR against the official OliverRensu/xAR model (tests/golden/xar_official.*, see its generator)."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from golden import weights as golden_weights
from tokax.interop.xar import params_from_official
from tokax.models.xar import XAR, flow_targets, sample

GOLDEN = pathlib.Path(__file__).parent.parent / "golden"


def _draw_weights(shapes, seed):
  """The generator's draw_weights: random_state_dict with RMSNorm weights at 1 + 0.1 N(0, 1)."""
  out = golden_weights.random_state_dict(shapes, seed)
  rng = np.random.default_rng(seed + 1000)
  for name in sorted(out):
    if name in ("z_proj_ln.weight", "encoder_norm.weight", "decoder_norm.weight"):
      out[name] = (1 + 0.1 * rng.standard_normal(out[name].shape)).astype(np.float32)
  return out


@pytest.fixture(scope="module")
def official():
  meta = json.loads((GOLDEN / "xar_official.json").read_text())
  data = dict(np.load(GOLDEN / "xar_official.npz"))
  shapes = {k: tuple(v) for k, v in meta["weight_shapes"].items()}
  params = jax.tree.map(jnp.asarray, params_from_official(_draw_weights(shapes, meta["weight_seed"])))
  model = XAR(token_dim=16, grid_size=16, entity="cell", entity_size=8, width=meta["width"],
              encoder_depth=meta["encoder_depth"], decoder_depth=meta["decoder_depth"], num_heads=meta["heads"],
              num_classes=1000)
  return meta, data, model, params


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def test_velocity_and_loss_match_official(official):
  meta, data, model, params = official
  b = meta["batch"]
  ents = model.entities
  seq = ents.to_sequence(np.transpose(data["x"], (0, 2, 3, 1)))  # NCHW -> NHWC -> cell order
  t = data["t"].reshape(ents.num_entities, b).T  # official row i * B + b -> (B, E)
  noise = np.transpose(data["noise"], (1, 0, 2, 3)).reshape(b, ents.seq_len, 16)
  x_t, target = flow_targets(jnp.asarray(seq), jnp.asarray(noise), jnp.asarray(t)[:, ents.entity_id])
  out = jax.jit(model.apply)(params, x_t, jnp.asarray(data["labels"]), jnp.asarray(t))
  loss = jnp.mean((out - target) ** 2)
  print(f"velocity rel {_rel(out, data['velocity']):.2e} loss {float(loss):.7f} vs {float(data['loss']):.7f}")
  assert _rel(out, data["velocity"]) < 1e-4
  assert abs(float(loss) - float(data["loss"])) / float(data["loss"]) < 1e-4


def test_kv_cached_em_sampler_matches_official(official):
  """sample_tokens (EM, cfg 2 with the linear ramp, 4 steps) on the same Gaussian draws."""
  meta, data, model, params = official
  steps, b = meta["sample_steps"], meta["batch"]
  draws = np.random.default_rng(meta["noise_seed"]).standard_normal((4, steps, b, 64, 16)).astype(np.float32)
  noise_fn = lambda e, i: jnp.asarray(draws)[e, i]
  run = jax.jit(lambda p, y: sample(model, p, y, num_steps=steps, cfg=meta["sample_cfg"], method="em",
                                    noise_fn=noise_fn))
  seq = run(params, jnp.asarray(meta["sample_labels"]))
  grid = np.transpose(np.asarray(model.entities.from_sequence(seq)), (0, 3, 1, 2))
  print(f"sample rel {_rel(grid, data['sample']):.2e}")
  assert _rel(grid, data["sample"]) < 1e-4

