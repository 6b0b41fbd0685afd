"""The TPU kernels inside a whole model, on the CPU: loss and gradients of a tiny ViT with
attention="pallas" (the Mosaic TPU kernel, interpreted) equal attention="xla", on 8 fake devices with
the batch sharded over them, and "auto"'s TPU rule.

The 8-device check runs this file as a script in a subprocess (this pytest process already has a
1-device backend): XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before jax starts.
There the kernels run in Pallas' interpreter (the models' interpret=True); the TPU simulator
(pltpu.InterpretParams) runs the same model on one device here (test_tpu_simulator_in_a_model): with
jax 0.10.2 the simulated flash kernel hung under jax.shard_map over several CPU devices.
"""
import os
import sys

if __name__ == "__main__":  # the 8-device worker: before jax is imported
  os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  os.environ["JAX_PLATFORMS"] = "cpu"

import json  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.experimental.pallas import tpu as pltpu  # noqa: E402

from tokax import kernels  # noqa: E402
from tokax.kernels import matching  # noqa: E402
from tokax.kernels.attention import auto_implementation  # noqa: E402
from tokax.models.vit import ViT  # noqa: E402
from tokax.reduction import EViT, ToMe  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
BATCH = 8  # one image per fake device

# The smallest model the brief allows: 32 px, patch 8 -> 16 patches + cls = 17 tokens, 2 heads of 32.
# The kernels pad 17 tokens to one (8-row, 128-lane) tile, the head dim to 128 lanes.
MODEL = dict(variant="Ti/8", width=64, depth=2, num_heads=2, mlp_dim=128, image_size=32, num_classes=10)
# EViT prunes at block 0 by the "cls" score (the kernel's side output) and fuses the dropped tokens with
# those scores as weights (so the scores' cotangents matter); proportional attention at block 1 gives the
# kernel a key_bias. ToMe merges with the Pallas matching kernel and proportional attention.
REDUCTIONS = {
    "evit": lambda interpret: EViT(keep_rate=0.5, layers=(0,), prop_attn=True),
    "tome": lambda interpret: ToMe(r=4, matching="pallas" if interpret else "xla", interpret=interpret),
}


def _inputs():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, size=(BATCH, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, 10, size=BATCH).astype(np.int32)
  return images, labels


def _model(method: str, attention: str) -> ViT:
  pallas = attention == "pallas"
  return ViT(**MODEL, attention=attention, interpret=pallas, reduction=REDUCTIONS[method](pallas))


def _params(model: ViT, images):
  params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
  # ViT's head starts at zero, which would give the backbone (and the attention) zero gradients.
  head = jax.random.normal(jax.random.key(1), params["head"]["kernel"].shape) * 0.5
  return {**params, "head": {**params["head"], "kernel": head}}


def _loss_fn(model: ViT):
  def loss(params, images, labels):
    logits = model.apply({"params": params}, images)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
  return jax.value_and_grad(loss)


def _max_rel_diff(grads, ref) -> float:
  diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-12)), grads, ref)
  return max(jax.tree.leaves(diffs))


def worker() -> dict:
  """On 8 devices: loss and grads of pallas (interpreted) and xla under one jit, batch over "data"."""
  assert jax.device_count() == 8, jax.devices()
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  batch_sharding = jax.NamedSharding(mesh, jax.P("data"))
  images, labels = _inputs()
  images, labels = jax.device_put(images, batch_sharding), jax.device_put(labels, batch_sharding)
  result = {}
  for method in REDUCTIONS:
    out = {}
    params = None
    for attention in ("xla", "pallas"):
      model = _model(method, attention)
      params = _params(model, np.zeros((1, 32, 32, 3), np.float32)) if params is None else params
      params = jax.device_put(params, jax.NamedSharding(mesh, jax.P()))
      step = jax.jit(_loss_fn(model), out_shardings=(jax.NamedSharding(mesh, jax.P()),) * 2)
      with jax.set_mesh(mesh):
        traced = step.trace(params, images, labels)
        jaxpr = str(traced.jaxpr)
        loss, grads = traced.lower().compile()(params, images, labels)
        jax.block_until_ready(grads)
      out[attention] = (loss, grads)
      if attention == "pallas":
        result[method] = {"pallas_calls": jaxpr.count("pallas_call"), "shard_maps": jaxpr.count("shard_map"),
                          "batch_spec": str(images.sharding.spec)}
    (loss_x, grads_x), (loss_p, grads_p) = out["xla"], out["pallas"]
    result[method].update(
        loss_xla=float(loss_x), loss_pallas=float(loss_p), grad_rel_diff=_max_rel_diff(grads_p, grads_x),
        grad_norm=float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads_x)))),
        attn_grad_norm=float(jnp.linalg.norm(grads_x["blocks_0"]["attn"]["qkv"]["kernel"])))
  return result


@pytest.fixture(scope="module")
def eight_devices():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve())], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("method", list(REDUCTIONS))
def test_pallas_model_on_8_devices_equals_xla(eight_devices, method):
  case = eight_devices[method]
  # the kernel path was taken, once per batch shard: attention forward/backward (+ matching) pallas_calls
  # inside jax.shard_map, the batch split over the 8 devices
  assert case["pallas_calls"] >= 2 and case["shard_maps"] >= 2, case
  assert case["batch_spec"] == str(jax.P("data"))
  np.testing.assert_allclose(case["loss_pallas"], case["loss_xla"], rtol=1e-5)
  assert case["attn_grad_norm"] > 1e-4  # the attention's backward is exercised, not multiplied by zero
  assert case["grad_rel_diff"] < 1e-4, case


@pytest.mark.slow
def test_tpu_simulator_in_a_model():
  """One device, the TPU simulator (pltpu.InterpretParams: VMEM, DMAs): EViT's loss and grads equal xla's."""
  images, labels = _inputs()
  images, labels = images[:1], labels[:1]
  ref_model, model = _model("evit", "xla"), _model("evit", "pallas")
  params = _params(ref_model, images)
  ref_loss, ref_grads = jax.jit(_loss_fn(ref_model))(params, images, labels)
  with pltpu.force_tpu_interpret_mode(pltpu.InterpretParams()):
    loss, grads = jax.jit(_loss_fn(model))(params, images, labels)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  assert float(jnp.linalg.norm(ref_grads["blocks_0"]["attn"]["qkv"]["kernel"])) > 1e-4
  assert _max_rel_diff(grads, ref_grads) < 1e-4


def _qkv(n: int, m: int, dtype=jnp.float32):
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.standard_normal((2, n, 2, 32)), dtype)
  k, v = (jnp.asarray(rng.standard_normal((2, m, 2, 32)), dtype) for _ in range(2))
  return q, k, v


def test_auto_rule_on_tpu():
  """"auto" on a TPU: the Pallas kernel for scores with >= 128 keys and no mask, no dropout; else xla."""
  auto = auto_implementation
  q, k, _ = _qkv(8, 128)
  short = k[:, :127]
  mask = jnp.ones((1, 1, 8, 128), bool)
  assert auto(q, k, ("cls",), backend="tpu") == "pallas"
  assert auto(q, k, ("received",), backend="tpu") == "pallas"
  assert auto(q.astype(jnp.bfloat16), k, ("cls",), backend="tpu") == "pallas"
  assert auto(q, k, (), backend="tpu") == "xla"  # no scores: XLA's own attention
  assert auto(q, short, ("cls",), backend="tpu") == "xla"  # fewer keys than one 128-lane block
  assert auto(q, k, ("cls",), mask, backend="tpu") == "xla"  # the kernel takes no general mask
  assert auto(q, k, ("cls",), dropout_rate=0.1, backend="tpu") == "xla"
  assert auto(q.astype(jnp.float16), k, ("cls",), backend="tpu") == "xla"
  assert auto(q, k, ("cls",), backend="cpu") == "xla"
  assert auto(q, k, ("cls",)) == "xla"  # this machine's backend: the CPU
  half = jnp.zeros((2, 8, 2, 64), jnp.bfloat16)  # the GPU kernel wants head dim 64 or 128
  assert auto(half, half, ("cls",), backend="gpu", compute_capability="9.0") == "pallas"  # the GPU rule is unchanged
  assert auto(half, half, (), backend="gpu") == "cudnn"
  assert matching.pallas_applies(k[:, :, 0], "tpu") and not matching.pallas_applies(k[:, :, 0], "cpu")


def test_auto_with_backend_tpu_runs_the_tpu_kernel():
  """backend="tpu" sends "auto" to the TPU kernel (interpreted here): outputs and scores equal xla's."""
  q, k, v = _qkv(20, 130)
  bias = jnp.asarray(np.random.default_rng(2).standard_normal((2, 130)), jnp.float32)
  ref_out, ref_scores = kernels.attention(q, k, v, key_bias=bias, scores=("cls", "received"), implementation="xla")
  call = lambda q, k, v: kernels.attention(q, k, v, key_bias=bias, scores=("cls", "received"), backend="tpu",
                                           interpret=True)
  assert str(jax.make_jaxpr(call)(q, k, v)).count("pallas_call") == 2  # the forward and "received" kernels
  out, scores = call(q, k, v)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  for name in ("cls", "received"):
    np.testing.assert_allclose(scores[name], ref_scores[name], rtol=1e-5, atol=1e-6)
  out, _ = kernels.attention(q, k, v, scores=(), backend="tpu", interpret=True)  # no scores: xla, exactly
  np.testing.assert_array_equal(out, kernels.attention(q, k, v, implementation="xla")[0])


def test_model_pallas_on_cpu_asks_for_interpret():
  images, _ = _inputs()
  model = ViT(**MODEL, attention="pallas")
  with pytest.raises(ValueError, match=r"ViT.attention='pallas': no compiled Pallas kernel on 'cpu'; set "
                                       r"ViT.interpret=True \(config.model.interpret\)"):
    model.init(jax.random.key(0), images[:1])


if __name__ == "__main__":
  print(json.dumps(worker()))
