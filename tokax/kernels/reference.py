"""Pure-jnp attention reference: the numbers every other implementation is checked against.

Layout follows jax.nn.dot_product_attention: q, k, v are (B, N, H, D).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array

SCORE_NAMES = ("cls", "received")


def attention_logits(q: Array, k: Array, key_bias: Array | None, key_mask: Array | None,
                     mask: Array | None = None) -> Array:
  """Scaled logits with the per-key bias and masks applied.

  Args:
    q: (B, N, H, D) queries.
    k: (B, M, H, D) keys.
    key_bias: (B, M) additive bias per key (proportional attention adds log size), or None.
    key_mask: (B, M) bool, True where the key is a real token, or None.
    mask: (B or 1, H or 1, N, M) bool, True where the query may attend to the key (a block-causal
      mask, say), or None.

  Returns:
    (B, H, N, M) float32 logits; masked entries are -inf.
  """
  scale = q.shape[-1] ** -0.5
  # head-major operands: XLA's CPU dot runs ~5x faster on (B, H, N, D) than on (B, N, H, D)
  q, k = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if key_bias is not None:
    logits = logits + key_bias.astype(jnp.float32)[:, None, None, :]
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, -jnp.inf)
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  return logits


def attention_scores(probs: Array, names: tuple[str, ...], query_mask: Array | None = None) -> dict[str, Array]:
  """Selection metrics read off the attention probabilities.

  Args:
    probs: (B, H, N, M) softmax probabilities.
    names: which scores: "cls" (head-averaged row of query 0, (B, M)), "received" (attention each key
      receives, averaged over heads and valid queries, (B, M)).
    query_mask: (B, N) bool valid queries, or None.
  """
  out = {}
  for name in names:
    if name == "cls":
      out["cls"] = probs[:, :, 0, :].mean(axis=1)
    elif name == "received":
      per_query = probs.mean(axis=1)  # (B, N, M)
      if query_mask is None:
        out["received"] = per_query.mean(axis=1)
      else:
        w = query_mask.astype(per_query.dtype)
        out["received"] = jnp.einsum("bnm,bn->bm", per_query, w) / jnp.maximum(w.sum(-1, keepdims=True), 1)
    else:
      raise ValueError(f"scores: unknown score {name!r}; expected a subset of {SCORE_NAMES}")
  return out


def attention_reference(
    q: Array,
    k: Array,
    v: Array,
    *,
    key_bias: Array | None = None,
    key_mask: Array | None = None,
    mask: Array | None = None,
    scores: tuple[str, ...] = (),
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
  """Softmax attention that materialises the probabilities.

  Args:
    q: (B, N, H, D); k, v: (B, M, H, D) (M = N for self-attention, M > N against a KV cache).
    key_bias: (B, M) additive per-key bias or None.
    key_mask: (B, M) bool valid keys or None.
    mask: (B or 1, H or 1, N, M) bool, True = attend, or None. Every query must keep at least
      one key (a fully masked row gives NaN, as in any softmax).
    scores: names of selection metrics to return (see attention_scores).
    dropout_rate: probability of zeroing each attention probability before the product with v
      (the survivors scaled by 1 / (1 - rate), as torch's SDPA dropout_p); needs dropout_rng.
      The scores come from the probabilities before dropout.

  Returns:
    out (B, N, H, D) in q's dtype, and a dict of (B, M) float32 scores.
  """
  logits = attention_logits(q, k, key_bias, key_mask, mask)
  probs = jax.nn.softmax(logits, axis=-1)
  weights = probs
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
    weights = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v.transpose(0, 2, 1, 3),
                   preferred_element_type=jnp.float32)
  query_mask = key_mask if q.shape[1] == k.shape[1] else None
  return out.transpose(0, 2, 1, 3).astype(q.dtype), attention_scores(probs, scores, query_mask)


def with_reference_backward(forward: Callable[..., tuple[Array, dict[str, Array]]]):
  """A forward-only attention kernel made differentiable through attention_reference's vjp.

  `forward(q, k, v, key_bias, key_mask, mask, scores, options) -> (out, scores dict)` with the
  arguments of attention_reference; `scores` and `options` (the kernel's own static settings,
  e.g. block sizes) are static. The backward recomputes attention in XLA with materialised
  probabilities: what the Pallas kernels use with backward="reference" (both default to their
  Pallas backward). The masks get no cotangent.
  """
  @functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
  def attend(q, k, v, key_bias, key_mask, mask, scores: tuple[str, ...], options: Any):
    return forward(q, k, v, key_bias, key_mask, mask, scores, options)

  def attend_fwd(q, k, v, key_bias, key_mask, mask, scores, options):
    return forward(q, k, v, key_bias, key_mask, mask, scores, options), (q, k, v, key_bias, key_mask, mask)

  def attend_bwd(scores, options, residuals, cotangents):
    q, k, v, key_bias, key_mask, mask = residuals
    reference = lambda q, k, v, key_bias: attention_reference(q, k, v, key_bias=key_bias, key_mask=key_mask,
                                                                mask=mask, scores=scores)
    _, vjp = jax.vjp(reference, q, k, v, key_bias)
    return (*vjp(cotangents), None, None)

  attend.defvjp(attend_fwd, attend_bwd)
  return attend


def _primal(x: Any) -> Any:
  return x.value if isinstance(x, jax.custom_derivatives.CustomVJPPrimal) else x


def _is_zero(cotangent: Any) -> bool:
  return isinstance(cotangent, jax.custom_derivatives.SymbolicZero)


def with_kernel_backward(forward: Callable[..., tuple[tuple[Array, dict[str, Array]], Any]],
                         backward: Callable[..., tuple[Array, Array, Array, Array | None]]):
  """An attention kernel differentiated by its own backward kernels, scores as the reference does.

  `forward(q, k, v, key_bias, key_mask, scores, options) -> ((out, scores dict), residuals)` and
  `backward(q, k, v, key_bias, key_mask, residuals, d_out, options) -> (dq, dk, dv, d key_bias or
  None)`; `scores` and `options` are static. The output's cotangent goes through `backward`; the
  scores' cotangents, unless symbolically zero (scores that only feed a selection's indices), go
  through attention_reference's vjp, as with_reference_backward differentiates them (that part
  materialises the (B, H, N, M) probabilities in XLA). key_mask gets no cotangent.
  """
  @functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
  def attend(q, k, v, key_bias, key_mask, scores: tuple[str, ...], options: Any):
    return forward(q, k, v, key_bias, key_mask, scores, options)[0]

  def attend_fwd(q, k, v, key_bias, key_mask, scores, options):
    q, k, v, key_bias, key_mask = jax.tree.map(
        _primal, (q, k, v, key_bias, key_mask),
        is_leaf=lambda x: isinstance(x, jax.custom_derivatives.CustomVJPPrimal))
    result, residuals = forward(q, k, v, key_bias, key_mask, scores, options)
    return result, (q, k, v, key_bias, key_mask, residuals)

  def attend_bwd(scores, options, saved, cotangents):
    q, k, v, key_bias, key_mask, residuals = saved
    d_out, d_scores = cotangents
    if _is_zero(d_out):
      grads = [jnp.zeros_like(q), jnp.zeros_like(k), jnp.zeros_like(v),
               None if key_bias is None else jnp.zeros_like(key_bias)]
    else:
      grads = list(backward(q, k, v, key_bias, key_mask, residuals, d_out, options))
    live = {name: ct for name, ct in d_scores.items() if not _is_zero(ct)}
    if live:
      names = tuple(live)
      score_fn = lambda q, k, v, key_bias: attention_reference(
          q, k, v, key_bias=key_bias, key_mask=key_mask, scores=names)[1]
      _, vjp = jax.vjp(score_fn, q, k, v, key_bias)
      grads = [g if r is None else g + r.astype(g.dtype) for g, r in zip(grads, vjp(live))]
    return (*grads, None)

  attend.defvjp(attend_fwd, attend_bwd, symbolic_zeros=True)
  return attend
