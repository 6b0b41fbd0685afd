"""VQ-EMA and LFQ under jax.shard_map over 8 fake CPU devices vs one device (run by test_quantizers.py).

Run as a script in a fresh process: XLA_FLAGS must ask for 8 host devices before jax is imported.
Prints one JSON line of max abs differences (and exact-match flags) between the two runs.
"""
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from tokax.tokenizers import LFQ, QUANTIZER_STATE, VectorQuantizerEMA  # noqa: E402

STEPS, BATCH, K, D = 3, 16, 32, 4


def _runner(module, sharded, mesh):
  """jitted (state, z) -> (new state, zq, codes, loss, metrics); sharded: shard_map over 'data'."""

  def step(state, z):
    (zq, out), new = module.apply({QUANTIZER_STATE: state} if state else {}, z, train=True, mutable=[QUANTIZER_STATE])
    loss, metrics = out.loss, dict(out.metrics)
    if sharded:  # per-device means of local terms -> the global-batch means (equal shard sizes)
      loss = jax.lax.pmean(loss, "data")
      for name in ("commitment", "per_sample_entropy"):
        if name in metrics:
          metrics[name] = jax.lax.pmean(metrics[name], "data")
    return new.get(QUANTIZER_STATE, {}), zq, out.codes, loss, metrics

  if not sharded:
    return jax.jit(step)
  step = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")),
                               out_specs=(P(), P("data"), P("data"), P(), P())))
  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  return lambda state, z: step(jax.device_put(state, replicated), jax.device_put(z, batch))


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  assert jax.device_count() == 8, jax.devices()
  mesh = jax.make_mesh((8,), ("data",))
  zs = np.random.default_rng(0).standard_normal((STEPS, BATCH, 3, 3, D)).astype(np.float32)
  report = {}

  vq = VectorQuantizerEMA(K, D, decay=0.8, dead_code_threshold=1.0, seed=3)
  state0 = jax.jit(lambda z: vq.init(jax.random.key(1), z, train=False))(zs[0])[QUANTIZER_STATE]
  one, many = _runner(vq, False, mesh), _runner(vq.clone(axis_name="data"), True, mesh)
  s1 = s8 = state0
  diffs, codes_equal, dead = [], True, []
  for z in zs:
    s1, zq1, c1, l1, m1 = one(s1, z)
    s8, zq8, c8, l8, m8 = many(s8, z)
    codes_equal &= bool(np.array_equal(c1, c8))
    diffs.append(max(_max_diff(s1, s8), _max_diff(zq1, zq8), _max_diff(l1, l8), _max_diff(m1, m8)))
    dead.append(float(m1["dead_codes"]))
  report["vq_ema_max_diff"] = max(diffs)
  report["vq_ema_codes_equal"] = codes_equal
  report["vq_ema_dead_codes_per_step"] = dead
  report["vq_ema_steps"] = int(s8["step"])

  lfq = LFQ(dim=6, num_codebooks=2)
  one, many = _runner(lfq, False, mesh), _runner(lfq.clone(axis_name="data"), True, mesh)
  _, zq1, c1, l1, m1 = one({}, 0.05 * zs[0, ..., :2].repeat(3, axis=-1))
  _, zq8, c8, l8, m8 = many({}, 0.05 * zs[0, ..., :2].repeat(3, axis=-1))
  report["lfq_max_diff"] = max(_max_diff(zq1, zq8), _max_diff(l1, l8), _max_diff(m1, m8))
  report["lfq_codes_equal"] = bool(np.array_equal(c1, c8))
  report["lfq_codebook_entropy"] = float(m1["codebook_entropy"])
  print(json.dumps(report))


if __name__ == "__main__":
  main()
