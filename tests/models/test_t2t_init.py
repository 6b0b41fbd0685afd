"""T2T-ViT's initialisation against the official yitu-opensource/T2T-ViT (issue 4).

The official T2T_ViT.__init__ ends with `self.apply(self._init_weights)`: every nn.Linear of the
stem, the backbone and the head gets timm's trunc_normal_(std=.02) (cut at +-2 in absolute units,
i.e. 100 std: a plain normal) and a zero bias; LayerNorms 1 / 0. tokax used flax's lecun normal
(std fan_in ** -0.5) instead, and a zero head: the Performer's q and k were then unit-variance, its
exp(w.u - |u|^2 / 2) features ~e^-30, the attention denominator ~1e-20 against the 1e-8 epsilon,
so both stem attentions were dead from the first step and got no gradient to their q and k.
"""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokax.models.t2t_vit import T2TViT
from tokax.train import losses

IMAGE, BATCH, CLASSES = 32, 4, 10
pytestmark = pytest.mark.slow  # the module fixture compiles two gradients (~10 s on 2 shared cores)


def _model(dtype):
  return T2TViT(variant="7", width=64, depth=1, num_heads=2, mlp_ratio=2.0, image_size=IMAGE,
                num_classes=CLASSES, dtype=dtype)


@pytest.fixture(scope="module")
def init_and_grads():
  """{dtype name: (params, grads of the label-smoothed CE at init)} on random images in [-1, 1]."""
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1.0, 1.0, (BATCH, IMAGE, IMAGE, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, CLASSES, BATCH), jnp.int32)
  # param_dtype is float32 for both computation dtypes, so one (jitted: eager init takes ~12 s) init serves both
  params = jax.jit(_model(jnp.float32).init)(jax.random.key(0), images[:1])
  out = {}
  for dtype in (jnp.float32, jnp.bfloat16):
    model = _model(dtype)

    def loss(p, model=model):
      return losses.softmax_cross_entropy(model.apply(p, images), labels, label_smoothing=0.1).mean()

    out[jnp.dtype(dtype).name] = jax.device_get((params, jax.jit(jax.grad(loss))(params)))
  return out


def _flat(tree):
  return {"/".join(k): np.asarray(v, np.float64) for k, v in flax.traverse_util.flatten_dict(tree["params"]).items()}


def test_dense_and_norm_params_follow_the_official_init(init_and_grads):
  params = _flat(init_and_grads["float32"][0])
  kernels = {k: v for k, v in params.items() if k.endswith("kernel")}
  assert len(kernels) == 14  # 4 per performer (kqv, proj, mlp_0, mlp_2), project, 4 in the block, head
  for name, kernel in kernels.items():
    # std of n normal draws: relative standard error 1 / sqrt(2 n) (<= 3.5% here: n >= 640)
    assert abs(kernel.std() / 0.02 - 1) < 0.15, (name, kernel.std())
    assert abs(kernel.mean()) < 4 * 0.02 / np.sqrt(kernel.size), name
  for name, value in params.items():
    if name.endswith("bias"):
      np.testing.assert_array_equal(value, 0.0, err_msg=name)
    elif name.endswith("scale"):
      np.testing.assert_array_equal(value, 1.0, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_parameter_gets_a_finite_nonzero_gradient_at_init(init_and_grads, dtype):
  grads = _flat(init_and_grads[dtype][1])
  for name, g in grads.items():
    assert np.all(np.isfinite(g)), name
    if name.endswith("/w"):  # the Performer's fixed random features: no gradient, as the official requires_grad=False
      np.testing.assert_array_equal(g, 0.0, err_msg=name)
    else:
      assert np.linalg.norm(g) > 0, name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_performer_queries_and_keys_learn_from_the_start(init_and_grads, dtype):
  """The k and q columns of each Performer's kqv get a gradient comparable to the v columns'.

  With flax's default init their ratio was ~1e-12 (the attention was dead), with the official one it is O(1).
  """
  grads = _flat(init_and_grads[dtype][1])
  for layer in ("attention1", "attention2"):
    g = grads[f"tokens_to_token/{layer}/kqv/kernel"]
    g_k, g_q, g_v = np.split(g, 3, axis=-1)
    ratio_k, ratio_q = np.linalg.norm(g_k) / np.linalg.norm(g_v), np.linalg.norm(g_q) / np.linalg.norm(g_v)
    assert ratio_k > 1e-2 and ratio_q > 1e-2, (layer, ratio_k, ratio_q)
