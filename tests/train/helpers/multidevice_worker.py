"""Run as a script on 8 fake CPU devices (tests/train/test_parallel.py starts it): sharded steps vs one device.

Prints one JSON line: for each (mesh, preset) the losses, the largest parameter difference to the
single-device run, the specs and shard shapes of some parameters, the trace and compile counts; and
a checkpoint saved from one mesh and restored onto another.
"""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import functools  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

from tokax.models.partitioning import constrain_batch  # noqa: E402
from tokax.train import checkpoint, optim, sharding  # noqa: E402
from tokax.train import run as training  # noqa: E402
from tokax.train.model import build_model  # noqa: E402
from tokax.train.step import init_state, make_train_step  # noqa: E402

STEPS = 3
PROBES = ("params/params/blocks_0/attn/qkv/kernel", "params/params/blocks_0/attn/qkv/bias",
          "params/params/blocks_0/attn/proj/kernel", "params/params/blocks_0/mlp_fc1/kernel",
          "params/params/blocks_0/mlp_fc2/kernel", "params/params/pos_embed", "params/params/head/bias",
          "opt_state/1/0/mu/params/blocks_0/attn/qkv/kernel", "step", "rng")
CASES = (((8, 1), "fsdp"), ((4, 2), "tensor"), ((2, 4), "fsdp_tensor"))


def flat(tree):
  return {sharding.path_string(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def setup():
  model = build_model(variant="Ti/4", image_size=16, num_classes=8, pool="cls", width=32, depth=1, num_heads=4,
                      mlp_dim=64)
  schedule = optim.lr_schedule(peak_lr=1e-3, warmup_steps=0, total_steps=STEPS)
  tx = optim.adamw(schedule, weight_decay=0.05, grad_clip_norm=1.0)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.uniform(size=(8, 16, 16, 3)).astype(np.float32),
              "label": rng.integers(0, 8, size=8).astype(np.int32)} for _ in range(STEPS)]
  init_fn = functools.partial(init_state, model, tx, image_shape=(16, 16, 3))
  step_fn = make_train_step(model=model, tx=tx, schedule=schedule, max_shift=1)
  return init_fn, step_fn, batches


def run(mesh, rules, init_fn, step_fn, batches):
  """STEPS sharded steps; returns (state, losses, traces of the step, compiled executables)."""
  shapes = jax.eval_shape(init_fn, jax.random.key(0))
  shardings = sharding.tree_shardings(shapes, rules, mesh)
  chex.clear_trace_counter()
  counted = chex.assert_max_traces(step_fn, n=1)
  with jax.set_mesh(mesh):
    state = jax.jit(init_fn, out_shardings=shardings)(jax.random.key(0))
    step = training.jit_train_step(counted, mesh, shardings)
    losses = []
    for batch in batches:
      state, metrics = step(state, sharding.global_batch(batch, sharding.batch_sharding(mesh), 8))
      losses.append(float(metrics["loss"]))
  return state, shardings, losses, step._cache_size()


def main():
  assert jax.device_count() == 8, jax.devices()
  init_fn, step_fn, batches = setup()
  single = sharding.make_mesh({"data": 1, "model": 1}, devices=jax.devices()[:1])
  ref_state, _, ref_losses, _ = run(single, sharding.resolve_rules("replicated"), init_fn, step_fn, batches)
  ref = flat(jax.device_get(ref_state))
  out = {"reference": {"losses": ref_losses}, "cases": []}
  states = {}
  for shape, preset in CASES:
    mesh = sharding.make_mesh({"data": shape[0], "model": shape[1]})
    state, shardings, losses, compiles = run(mesh, sharding.resolve_rules(preset), init_fn, step_fn, batches)
    states[(shape, preset)] = (state, mesh)
    got = flat(state)
    diffs = {k: float(np.max(np.abs(np.asarray(jax.device_get(v), np.float64) - ref[k]))) for k, v in got.items()}
    rel = {k: diffs[k] / (float(np.max(np.abs(ref[k]))) + 1e-12) for k in diffs}
    out["cases"].append({
        "mesh": list(shape), "preset": preset, "losses": losses, "compiles": compiles,
        "max_abs_diff": max(diffs.values()), "max_rel_diff": max(rel.values()), "worst": max(rel, key=rel.get),
        "specs": {k: [list(e) if isinstance(e, tuple) else e for e in got[k].sharding.spec] for k in PROBES},
        "shard_shapes": {k: list(got[k].addressable_shards[0].data.shape) for k in PROBES},
        "shapes": {k: list(got[k].shape) for k in PROBES},
        "rule_specs": {k: [list(e) if isinstance(e, tuple) else e for e in s.spec]
                       for k, s in flat(shardings).items() if k in PROBES},
    })

  # Save from the (8, 1) FSDP run, restore onto the (2, 4) fsdp_tensor mesh with its shardings.
  source, _ = states[((8, 1), "fsdp")]
  target_state, target_mesh = states[((2, 4), "fsdp_tensor")]
  target_shardings = jax.tree.map(lambda x: x.sharding, target_state)
  with tempfile.TemporaryDirectory() as tmp:
    manager = checkpoint.make_manager(os.path.join(tmp, "ckpt"), max_to_keep=1)
    checkpoint.save(manager, STEPS, source, {"epoch": 0, "batch": STEPS})
    manager.wait_until_finished()
    target = checkpoint.abstract_state(jax.eval_shape(lambda: source), target_shardings)
    restored, position = checkpoint.restore(manager, STEPS, target)
    manager.close()
  src, dst = flat(jax.device_get(source)), flat(restored)
  out["restore"] = {
      "bitwise_equal": all(np.array_equal(src[k], np.asarray(jax.device_get(dst[k]))) for k in src),
      "shardings_are_target": all(dst[k].sharding == flat(target_shardings)[k] for k in dst),
      "qkv_spec": [list(e) if isinstance(e, tuple) else e
                   for e in dst["params/params/blocks_0/attn/qkv/kernel"].sharding.spec],
      "position": position,
  }

  # The activation helper: split over "data" under a mesh, untouched without one.
  x = jnp.arange(8 * 3, dtype=jnp.float32).reshape(8, 3)
  f = jax.jit(lambda x: constrain_batch(x * 2))
  with jax.set_mesh(states[((4, 2), "tensor")][1]):
    constrained = f(x)
  out["constrain_batch"] = {"with_mesh": str(constrained.sharding.spec), "without_mesh": str(f(x).sharding),
                            "values_equal": bool(np.array_equal(constrained, x * 2))}
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
