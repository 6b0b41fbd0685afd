"""Sharded training on 8 fake CPU devices equals one device; the sharding rules; mesh and rule errors.

The multi-device checks run in one subprocess (helpers/multidevice_worker.py), since this pytest
process already has a 1-device backend.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from tokax.train import sharding

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def worker():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, str(REPO / "tests/train/helpers/multidevice_worker.py")],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


# The specs each preset must give (rules in tokax.train.sharding), for the probed leaves.
EXPECTED = {
    "fsdp": {"params/params/blocks_0/attn/qkv/kernel": [None, "data"],  # (32, 96): 96 is the largest dim
             "params/params/blocks_0/mlp_fc2/kernel": ["data", None],  # (64, 32)
             "params/params/pos_embed": [None, None, "data"],
             "opt_state/1/0/mu/params/blocks_0/attn/qkv/kernel": [None, "data"],  # moments follow their params
             "step": [], "rng": []},
    "tensor": {"params/params/blocks_0/attn/qkv/kernel": [None, "model"],  # column parallel
               "params/params/blocks_0/attn/qkv/bias": ["model"],
               "params/params/blocks_0/attn/proj/kernel": ["model", None],  # row parallel
               "params/params/blocks_0/mlp_fc1/kernel": [None, "model"],
               "params/params/blocks_0/mlp_fc2/kernel": ["model", None],
               "params/params/pos_embed": [], "params/params/head/bias": [],
               "opt_state/1/0/mu/params/blocks_0/attn/qkv/kernel": [None, "model"]},
    "fsdp_tensor": {"params/params/blocks_0/attn/qkv/kernel": ["data", "model"],
                    "params/params/blocks_0/attn/proj/kernel": ["model", "data"],
                    "params/params/blocks_0/mlp_fc2/kernel": ["model", "data"],
                    "params/params/head/bias": ["data"], "rng": []},
}


@pytest.mark.slow
def test_sharded_steps_equal_one_device(worker):
  ref = worker["reference"]["losses"]
  assert len(worker["cases"]) == 3 and len(set(np.round(ref, 4))) == 3  # the loss moves: the steps do something
  for case in worker["cases"]:
    where = f"mesh {case['mesh']} {case['preset']}"
    np.testing.assert_allclose(case["losses"], ref, rtol=2e-6, err_msg=where)
    assert case["max_abs_diff"] < 2e-5, (where, case["worst"], case["max_abs_diff"])  # lr 1e-3: a wrong update is ~1e-3
    assert case["compiles"] == 1, where  # and chex.assert_max_traces(n=1) held in the worker


@pytest.mark.slow
def test_parameter_shardings_follow_the_rules(worker):
  for case in worker["cases"]:
    mesh = dict(zip(("data", "model"), case["mesh"]))
    for path, spec in EXPECTED[case["preset"]].items():
      assert case["specs"][path] == spec, (case["mesh"], case["preset"], path)
      assert case["rule_specs"][path] == spec
    for path, spec in case["specs"].items():  # each device holds the slice the spec asks for
      want = [n // (mesh[axis] if axis else 1) for n, axis in
              zip(case["shapes"][path], spec + [None] * (len(case["shapes"][path]) - len(spec)))]
      assert case["shard_shapes"][path] == want, (case["preset"], path)


@pytest.mark.slow
def test_restore_onto_another_mesh(worker):
  restore = worker["restore"]
  assert restore["bitwise_equal"] and restore["shardings_are_target"]
  assert restore["qkv_spec"] == ["data", "model"]  # saved FSDP over 8, restored as fsdp_tensor on (2, 4)
  assert restore["position"] == {"epoch": 0, "batch": 3}


@pytest.mark.slow
def test_activation_constraint(worker):
  result = worker["constrain_batch"]
  assert result["with_mesh"] == "P('data',)" and result["values_equal"]
  assert "SingleDevice" in result["without_mesh"]


def test_mesh_shape_and_errors():
  assert sharding.mesh_shape({"data": -1, "model": 2}, 8) == (4, 2)
  assert sharding.mesh_shape({"data": 2, "model": 4}, 8) == (2, 4)
  with pytest.raises(ValueError, match="do not divide the 8 devices"):
    sharding.mesh_shape({"data": -1, "model": 3}, 8)
  with pytest.raises(ValueError, match="covers 4 devices but there are 8"):
    sharding.mesh_shape({"data": 2, "model": 2}, 8)
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sharding.mesh_shape({"data": -1, "model": -1}, 8)
  with pytest.raises(ValueError, match="needs a 'data' axis"):
    sharding.make_mesh({"batch": -1})


def test_rule_errors_name_the_parameter_and_the_fix():
  mesh = sharding.make_mesh({"data": 1, "model": 1})
  tree = {"params": {"attn": {"qkv": {"kernel": np.zeros((6, 18), np.float32)}}}}
  rules = sharding.resolve_rules("tensor", [(r"qkv/kernel$", (None, "model", None))])
  with pytest.raises(ValueError, match=r"params/attn/qkv/kernel has shape \(6, 18\)"):
    sharding.tree_specs(tree, rules, mesh)
  with pytest.raises(ValueError, match="names mesh axis 'expert'"):
    sharding.tree_specs(tree, sharding.resolve_rules([(".*", ("expert",))]), mesh)
  with pytest.raises(ValueError, match="unknown preset 'fdsp'"):
    sharding.resolve_rules("fdsp")
  # Divisibility is checked against the mesh's sizes: a fake (.., 4)-sized model axis.
  fake = jax.sharding.AbstractMesh((1, 4), ("data", "model"))
  with pytest.raises(ValueError, match=r"dim 0 of params/attn/qkv/kernel \(shape \(6, 18\)\) has size 6, not "
                                       r"divisible by mesh axis 'model' of size 4"):
    sharding.leaf_spec("params/attn/qkv/kernel", (6, 18), ((".*", ("model",)),), fake)
  # FSDP shards the largest divisible dim, and replicates what nothing divides.
  fake = jax.sharding.AbstractMesh((4, 1), ("data", "model"))
  assert sharding.leaf_spec("w", (8, 12), sharding.PRESETS["fsdp"], fake) == jax.P(None, "data")
  assert sharding.leaf_spec("w", (6, 10), sharding.PRESETS["fsdp"], fake) == jax.P()
  assert sharding.leaf_spec("rng", (4,), sharding.PRESETS["fsdp"], fake) == jax.P()
