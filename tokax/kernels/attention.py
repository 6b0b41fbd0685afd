"""The one attention entry point of tokax.

Every model calls `attention`; it picks an implementation and optionally returns the per-token
selection metrics that reduction methods need ("cls", "received"). Implementations:

- "xla": the pure-jnp reference (materialises the probabilities; always available).
- "cudnn": jax.nn.dot_product_attention(implementation="cudnn"): flash attention on NVIDIA GPUs,
  bf16/fp16 only, no score side outputs.
- None / "auto": cudnn where it applies (GPU, half precision, no scores requested), else xla.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from tokax.kernels import reference

Array = jax.Array

IMPLEMENTATIONS = ("xla", "cudnn", "auto")


def _check_inputs(q: Array, k: Array, v: Array, key_bias: Array | None, key_mask: Array | None) -> None:
  if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
    raise ValueError(
        f"attention: q, k, v must all be (B, N, H, D) with equal shapes; got {q.shape}, {k.shape}, {v.shape}")
  batch, n = q.shape[:2]
  for name, arr in (("key_bias", key_bias), ("key_mask", key_mask)):
    if arr is not None and arr.shape != (batch, n):
      raise ValueError(f"attention: {name} must be (B, N) = {(batch, n)}; got {arr.shape}")


def cudnn_applies(q: Array, scores: tuple[str, ...]) -> bool:
  """Whether cuDNN flash attention can serve this call on the default backend."""
  return (not scores and jax.default_backend() == "gpu"
          and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] % 8 == 0 and q.shape[-1] <= 120)


def fold_key_bias(q: Array, k: Array, v: Array, key_bias: Array) -> tuple[Array, Array, Array]:
  """Carry a per-key bias as one more head channel, for kernels that take no (B, N) bias.

  With q_e = 1 and k_e = bias / scale (scale = D ** -0.5 of the original D), q'.k' * scale =
  q.k * scale + bias. The head dimension is zero-padded to the next multiple of 8.

  Args:
    q, k, v: (B, N, H, D); key_bias: (B, N).

  Returns:
    q', k', v' of shape (B, N, H, D') with D' = D + 8 - D % 8; attend with scale D ** -0.5 and
    keep out[..., :D].
  """
  d = q.shape[-1]
  pad = 8 - d % 8
  scale = d ** -0.5
  extra_q = jnp.zeros(q.shape[:-1] + (pad,), q.dtype).at[..., 0].set(1)
  extra_k = jnp.zeros(k.shape[:-1] + (pad,), k.dtype).at[..., 0].set((key_bias / scale).astype(k.dtype)[:, :, None])
  zeros_v = jnp.zeros(v.shape[:-1] + (pad,), v.dtype)
  return (jnp.concatenate([q, extra_q], -1), jnp.concatenate([k, extra_k], -1), jnp.concatenate([v, zeros_v], -1))


def _cudnn(q: Array, k: Array, v: Array, key_bias: Array | None, key_mask: Array | None) -> Array:
  """cuDNN flash attention; a key bias rides in the head dimension (fold_key_bias) rather than as a
  (B, 1, N, N) bias tensor, which costs a few percent more FLOPs instead of an N x N read per layer."""
  d = q.shape[-1]
  mask = None
  if key_mask is not None:  # cuDNN wants the mask with full query and key lengths
    batch, n = q.shape[:2]
    mask = jnp.broadcast_to(key_mask[:, None, None, :], (batch, 1, n, n))
  if key_bias is not None:
    q, k, v = fold_key_bias(q, k, v, key_bias)
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=d ** -0.5, implementation="cudnn")
  return out[..., :d]


def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    key_bias: Array | None = None,
    key_mask: Array | None = None,
    scores: tuple[str, ...] = (),
    implementation: str | None = None,
) -> tuple[Array, dict[str, Array]]:
  """Multi-head softmax attention with optional per-key bias, key mask and selection scores.

  Args:
    q, k, v: (B, N, H, D).
    key_bias: (B, N) additive bias per key (proportional attention: log token size), or None.
    key_mask: (B, N) bool, True for real tokens (DToMe padding), or None.
    scores: subset of ("cls", "received"); each is returned as a (B, N) float32 array.
    implementation: "xla", "cudnn" or None/"auto".

  Returns:
    out (B, N, H, D) in q's dtype and a dict name -> (B, N) scores.
  """
  _check_inputs(q, k, v, key_bias, key_mask)
  scores = tuple(scores)
  for name in scores:
    if name not in reference.SCORE_NAMES:
      raise ValueError(f"attention: unknown score {name!r}; expected a subset of {reference.SCORE_NAMES}")
  if implementation in (None, "auto"):
    implementation = "cudnn" if cudnn_applies(q, scores) else "xla"
  if implementation == "xla":
    return reference.attention_reference(q, k, v, key_bias=key_bias, key_mask=key_mask, scores=scores)
  if implementation == "cudnn":
    if scores:
      raise ValueError(
          f"attention: implementation='cudnn' returns no scores but scores={scores} were requested; "
          "use implementation='xla' (or 'auto', which picks one that can)")
    return _cudnn(q, k, v, key_bias, key_mask), {}
  raise ValueError(f"attention: unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
