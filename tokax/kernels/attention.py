"""The one attention entry point of tokax.

Every model calls `attention`; it picks an implementation and optionally returns the per-token
selection metrics that reduction methods need ("cls", "received"). Implementations:

- "xla": the pure-jnp reference (materialises the probabilities; always available).
- "cudnn": jax.nn.dot_product_attention(implementation="cudnn"): flash attention on NVIDIA GPUs,
  forward and backward (under differentiation or with masks, lengths padded to a multiple of 64 and
  padded keys masked: cudnn_attention, cudnn_padded), bf16/fp16 only, no score side outputs.
- "pallas": the fused attention-and-select kernels (flash attention that emits the scores from the
  same tiles): Mosaic TPU on TPU (tokax.kernels.tpu), Mosaic GPU on NVIDIA (tokax.kernels.mosaic_gpu).
  On CPU it runs the TPU kernel in interpret mode when `interpret` is given. No general `mask`.
  Backward: each kernel's own Pallas backward (dq and dk/dv kernels), the scores' cotangents
  through the reference's vjp. Under jax.set_mesh over several devices the kernel runs per device
  through jax.shard_map over the mesh's axes, the batch split over `batch_axis` ("data")
  (common.per_batch_shard): XLA cannot partition a pallas_call itself.
- None / "auto": `auto_implementation`, for the `backend` given (default: jax.default_backend()):
  - "gpu": pallas when scores are requested on a Hopper GPU in half precision (pallas_applies),
    cudnn where it applies (half precision, no scores requested), else xla.
  - "tpu": pallas (the Mosaic TPU kernel) when tpu_pallas_applies: scores are requested, there is
    no general mask, q is float32 or bfloat16, and there are at least TPU_MIN_KEYS = 128 keys (one
    lane-wide key block; below it the kernel pads the keys to a whole block and XLA's materialised
    probabilities are no larger than that one tile). Otherwise xla, which XLA:TPU fuses itself;
    without scores nothing is gained by the Pallas kernel over it. This rule is reasoned from the
    kernel's design, not measured: no TPU was available when it was written (docs/tpu.md).
  - any other backend (cpu): xla.
  Attention dropout (dropout_rate > 0) always takes xla.

Keys and values may be longer than the queries (attention against a KV cache), and a general
boolean `mask` (B or 1, H or 1, N, M) expresses block-causal or cache-validity patterns.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from tokax.kernels import common as fc
from tokax.kernels import reference

Array = jax.Array

# cuDNN's fused backward wants lengths it has kernels for (it refused N = 197 on an H100): the
# "cudnn" path pads queries and keys to a multiple of this and masks the padded keys.
CUDNN_LENGTH_MULTIPLE = 64

IMPLEMENTATIONS = ("xla", "cudnn", "pallas", "auto")


def _check_inputs(q: Array, k: Array, v: Array, key_bias: Array | None, key_mask: Array | None,
                  mask: Array | None) -> None:
  if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape or k.shape[::2] != q.shape[::2] or k.shape[3] != q.shape[3]:
    raise ValueError(
        "attention: q must be (B, N, H, D) and k, v (B, M, H, D) with the same B, H, D; "
        f"got {q.shape}, {k.shape}, {v.shape}")
  batch, n, heads = q.shape[:3]
  m = k.shape[1]
  for name, arr in (("key_bias", key_bias), ("key_mask", key_mask)):
    if arr is not None and arr.shape != (batch, m):
      raise ValueError(f"attention: {name} must be (B, M) = {(batch, m)}; got {arr.shape}")
  if mask is not None:
    ok = (mask.ndim == 4 and mask.shape[0] in (1, batch) and mask.shape[1] in (1, heads)
          and mask.shape[2:] == (n, m) and mask.dtype == jnp.bool_)
    if not ok:
      raise ValueError(
          f"attention: mask must be a bool array of shape (B or 1, H or 1, N, M) = ({batch} or 1, {heads} or 1, "
          f"{n}, {m}); got {mask.dtype} {mask.shape}")


def cudnn_applies(q: Array, scores: tuple[str, ...], *, backend: str | None = None) -> bool:
  """Whether cuDNN flash attention can serve this call on `backend` (default: the default backend).

  Conditions: a GPU, half precision, head dim a multiple of 8 and <= 120, no scores. Any length and
  any mask: cudnn_padded pads both lengths to CUDNN_LENGTH_MULTIPLE (cuDNN rejects a mask, which
  reaches it as a bias, at odd lengths, and its backward refused N = 197).
  """
  backend = jax.default_backend() if backend is None else backend
  if scores or backend != "gpu" or q.dtype not in (jnp.bfloat16, jnp.float16):
    return False
  if q.shape[-1] % 8 or q.shape[-1] > 120:
    return False
  return True


def pallas_applies(q: Array, scores: tuple[str, ...], mask: Array | None, *, backend: str | None = None,
                   compute_capability: str | None = None) -> bool:
  """Whether "auto" should take the fused Mosaic GPU kernel: scores requested on a Hopper-or-later GPU.

  Conditions: scores asked for (without them cuDNN is faster), backend "gpu" with compute capability
  >= 9.0 (wgmma), half precision (the kernel's operands; float32 stays on the exact "xla" path),
  head dim 64 or 128, no general mask. On an H200 the kernel with "cls" or "received" was 1.3-3.7x
  faster than XLA's materialised probabilities, and its backward 1.1-1.2x cuDNN's (BENCHMARKS.md).
  """
  backend = jax.default_backend() if backend is None else backend
  if not scores or mask is not None or backend != "gpu" or q.dtype not in (jnp.bfloat16, jnp.float16):
    return False
  if q.shape[-1] not in (64, 128):
    return False
  if compute_capability is None:
    compute_capability = getattr(jax.devices()[0], "compute_capability", "0.0")
  return tuple(int(x) for x in str(compute_capability).split(".")[:2]) >= (9, 0)


# "auto" takes the Mosaic TPU kernel from this many keys on: one key block is 128 lanes wide, so a
# shorter sequence is padded up to a whole block (and XLA's (B, H, N, M) probabilities are no larger).
TPU_MIN_KEYS = 128


def tpu_pallas_applies(q: Array, k: Array, scores: tuple[str, ...], mask: Array | None, *,
                       backend: str | None = None) -> bool:
  """Whether "auto" should take the fused Mosaic TPU kernel on `backend` (default: the default backend).

  Conditions: backend "tpu", scores asked for (the kernel's reason to exist: the scores come from the
  attention tiles, no (B, H, N, M) probabilities in HBM), no general mask (the kernel takes key_bias
  and key_mask only), q float32 or bfloat16, and M >= TPU_MIN_KEYS keys. Any head dim and length
  otherwise: the kernel pads N, M and D to its blocks and masks the padding. Not measured on a TPU.
  """
  backend = jax.default_backend() if backend is None else backend
  if backend != "tpu" or not scores or mask is not None:
    return False
  if q.dtype not in (jnp.float32, jnp.bfloat16):
    return False
  return k.shape[1] >= TPU_MIN_KEYS


def auto_implementation(q: Array, k: Array, scores: tuple[str, ...] = (), mask: Array | None = None, *,
                        dropout_rate: float = 0.0, backend: str | None = None,
                        compute_capability: str | None = None) -> str:
  """The implementation "auto" (or None) picks for this call on `backend`: "xla", "cudnn" or "pallas".

  GPU: "pallas" where pallas_applies (scores on Hopper, half precision), else "cudnn" where
  cudnn_applies, else "xla". TPU: "pallas" where tpu_pallas_applies, else "xla". Other backends and
  attention dropout: "xla". `backend` defaults to jax.default_backend(); pass it to ask what
  another platform would pick (the tests do, on a CPU).
  """
  backend = jax.default_backend() if backend is None else backend
  if dropout_rate > 0.0:
    return "xla"
  if backend == "gpu":
    if pallas_applies(q, scores, mask, backend=backend, compute_capability=compute_capability):
      return "pallas"
    if cudnn_applies(q, scores, backend=backend):
      return "cudnn"
    return "xla"
  if backend == "tpu" and tpu_pallas_applies(q, k, scores, mask, backend=backend):
    return "pallas"
  return "xla"


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


def cudnn_mask(q: Array, k: Array, key_mask: Array | None, mask: Array | None) -> Array | None:
  """key_mask (B, M) and mask (B|1, H|1, N, M) combined into the (B, 1 or H, N, M) bool mask cuDNN takes."""
  batch, n, heads = q.shape[:3]
  m = k.shape[1]
  combined = None
  if key_mask is not None:
    combined = key_mask[:, None, None, :]
  if mask is not None:
    combined = mask if combined is None else jnp.logical_and(combined, mask)
  if combined is None:
    return None
  return jnp.broadcast_to(combined, (batch, combined.shape[1] if combined.shape[1] == heads else 1, n, m))


def cudnn_attention(q: Array, k: Array, v: Array, key_bias: Array | None, key_mask: Array | None,
                    mask: Array | None, *, implementation: str = "cudnn") -> Array:
  """cuDNN flash attention: as it is when only evaluated, padded (cudnn_padded) when differentiated.

  cuDNN's forward takes any length, but its backward refuses some (N = 197, 577), and padding the
  forward to 64 costs inference time (ViT-B/16's N = 197 on an H100: 0.56 vs 0.33 ms per
  (256, 197, 12, 64) call). So without masks the primal is one unpadded call and the custom_vjp's
  forward rule is cudnn_padded's (its outputs and gradients); with key_mask or mask (which reach
  cuDNN as a bias, refused at odd lengths) it is cudnn_padded throughout. Args as cudnn_padded.
  """
  if key_mask is not None or mask is not None:
    return cudnn_padded(q, k, v, key_bias, key_mask, mask, implementation=implementation)
  return _cudnn_unpadded_or_padded(q, k, v, key_bias, implementation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _cudnn_unpadded_or_padded(q: Array, k: Array, v: Array, key_bias: Array | None, implementation: str) -> Array:
  d = q.shape[-1]
  if key_bias is not None:
    q, k, v = fold_key_bias(q, k, v, key_bias)
  return jax.nn.dot_product_attention(q, k, v, scale=d ** -0.5, implementation=implementation)[..., :d]


def _cudnn_padded_fwd(q, k, v, key_bias, implementation):
  return jax.vjp(lambda q, k, v, b: cudnn_padded(q, k, v, b, None, None, implementation=implementation),
                 q, k, v, key_bias)


def _cudnn_padded_bwd(implementation, vjp, d_out):
  return vjp(d_out)


_cudnn_unpadded_or_padded.defvjp(_cudnn_padded_fwd, _cudnn_padded_bwd)


def cudnn_padded(q: Array, k: Array, v: Array, key_bias: Array | None, key_mask: Array | None, mask: Array | None,
                 *, implementation: str = "cudnn") -> Array:
  """Flash attention through jax.nn.dot_product_attention with its own backward, at any length.

  N and M are padded to multiples of CUDNN_LENGTH_MULTIPLE; the padded keys are masked (by
  key_value_seq_lengths, or False in the boolean mask when there is one) and the padded query rows
  dropped, so outputs and gradients equal unpadded attention. A key bias rides in the head dimension
  (fold_key_bias). `implementation` is passed on ("xla" checks the padding logic on a CPU).

  Args:
    q: (B, N, H, D); k, v: (B, M, H, D); key_bias (B, M) or None; key_mask (B, M) bool or None;
      mask (B|1, H|1, N, M) bool or None.

  Returns:
    (B, N, H, D) in q's dtype.
  """
  batch, n, _, d = q.shape
  m = k.shape[1]
  combined = cudnn_mask(q, k, key_mask, mask)
  if key_bias is not None:
    q, k, v = fold_key_bias(q, k, v, key_bias)
  n_pad, m_pad = fc.round_up(n, CUDNN_LENGTH_MULTIPLE), fc.round_up(m, CUDNN_LENGTH_MULTIPLE)
  if combined is None and (n_pad, m_pad) == (n, m):
    # nothing to pad: no sequence lengths either (cuDNN's padding-mask kernels were 1.13-1.28x
    # slower in the forward at N = 1024 and 4096 on an H200)
    out = jax.nn.dot_product_attention(q, k, v, scale=d ** -0.5, implementation=implementation)
    return out[..., :d]
  q = fc.pad_axis(q, 1, n_pad)
  k, v = fc.pad_axis(k, 1, m_pad), fc.pad_axis(v, 1, m_pad)
  if combined is None:
    out = jax.nn.dot_product_attention(
        q, k, v, scale=d ** -0.5, query_seq_lengths=jnp.full((batch,), n, jnp.int32),
        key_value_seq_lengths=jnp.full((batch,), m, jnp.int32), implementation=implementation)
  else:
    combined = jnp.pad(combined, ((0, 0), (0, 0), (0, n_pad - n), (0, m_pad - m)))
    combined = combined.at[:, :, n:, 0].set(True)  # padded query rows keep one key: no empty softmax
    out = jax.nn.dot_product_attention(q, k, v, mask=combined, scale=d ** -0.5, implementation=implementation)
  return out[:, :n, :, :d]


def _pallas(q: Array, k: Array, v: Array, key_bias: Array | None, key_mask: Array | None,
            mask: Array | None, scores: tuple[str, ...], interpret: Any, backend: str,
            batch_axis: str | None) -> tuple[Array, dict[str, Array]]:
  """Dispatch to the Pallas kernel of `backend`, once per batch shard under a mesh (per_batch_shard)."""
  if mask is not None:
    raise ValueError("attention: implementation='pallas' takes key_bias and key_mask but no general mask; "
                     "use implementation='xla' for a (B, H, N, M) mask")
  if backend == "gpu":
    from tokax.kernels.mosaic_gpu import flash_attention as gpu_flash
    kernel = functools.partial(gpu_flash.flash_attention, scores=scores, interpret=bool(interpret))
  elif backend == "tpu" or interpret is not None:
    from tokax.kernels.tpu import flash_attention as tpu_flash
    kernel = functools.partial(tpu_flash.flash_attention, scores=scores, interpret=interpret)
  else:
    raise ValueError(
        f"attention: implementation='pallas' has no kernel for backend {backend!r}; pass interpret=True "
        "(Pallas' interpreter) or interpret=jax.experimental.pallas.tpu.InterpretParams() (the TPU simulator) "
        "to run the TPU kernel on it, or use 'xla'")
  call = lambda q, k, v, key_bias, key_mask: kernel(q, k, v, key_bias=key_bias, key_mask=key_mask)
  return fc.per_batch_shard(call, q, k, v, key_bias, key_mask, axis=batch_axis)


def attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    key_bias: Array | None = None,
    key_mask: Array | None = None,
    mask: Array | None = None,
    scores: tuple[str, ...] = (),
    implementation: str | None = None,
    interpret: Any = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    backend: str | None = None,
    batch_axis: str | None = fc.BATCH_AXIS,
) -> tuple[Array, dict[str, Array]]:
  """Multi-head softmax attention with optional per-key bias, masks and selection scores.

  Args:
    q: (B, N, H, D) queries; k, v: (B, M, H, D) keys and values (M = N for self-attention).
    key_bias: (B, M) additive bias per key (proportional attention: log token size), or None.
    key_mask: (B, M) bool, True for real tokens (DToMe padding), or None.
    mask: (B or 1, H or 1, N, M) bool, True where query n may attend to key m (block-causal
      generation, KV-cache validity), or None. Every query must keep at least one key.
    scores: subset of ("cls", "received"); each is returned as a (B, M) float32 array.
    implementation: "xla", "cudnn", "pallas" or None/"auto".
    interpret: for "pallas" only: passed to the kernel. On a backend other than "gpu": True runs the
      TPU kernel in Pallas' interpreter (an XLA loop; any number of devices), pltpu.InterpretParams()
      in the TPU simulator (memory spaces, DMAs, race detection; one device: under shard_map on
      several CPU devices it hung with jax 0.10.2). On "gpu", True runs the GPU kernel in Pallas'
      GPU interpreter. Required on CPU.
    dropout_rate: dropout on the attention probabilities (training), with dropout_rng; only the
      "xla" implementation has it ("auto" picks xla when dropout_rate > 0).
    backend: the platform whose "auto" rule applies and whose Pallas kernel "pallas" runs ("gpu",
      "tpu", "cpu"); default jax.default_backend(). backend="tpu" with `interpret` runs the TPU
      path on a CPU.
    batch_axis: the mesh axis the batch is split over: under jax.set_mesh over several devices,
      "pallas" runs its kernel per device (jax.shard_map), with the batch split over this axis when
      the mesh has it and it divides B, replicated otherwise (and with None).

  Returns:
    out (B, N, H, D) in q's dtype and a dict name -> (B, M) scores.
  """
  _check_inputs(q, k, v, key_bias, key_mask, mask)
  scores = tuple(scores)
  for name in scores:
    if name not in reference.SCORE_NAMES:
      raise ValueError(f"attention: unknown score {name!r}; expected a subset of {reference.SCORE_NAMES}")
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"attention: dropout_rate must be in [0, 1); got {dropout_rate!r}")
  if dropout_rate > 0.0 and dropout_rng is None:
    raise ValueError("attention: dropout_rate > 0 needs dropout_rng (a jax.random key); pass dropout_rate=0 at eval")
  backend = jax.default_backend() if backend is None else backend
  if implementation in (None, "auto"):
    implementation = auto_implementation(q, k, scores, mask, dropout_rate=dropout_rate, backend=backend)
  if dropout_rate > 0.0 and implementation != "xla":
    raise ValueError(f"attention: dropout_rate={dropout_rate} needs implementation='xla' (or 'auto'); "
                     f"the {implementation!r} kernels have no attention dropout")
  if implementation == "xla":
    return reference.attention_reference(q, k, v, key_bias=key_bias, key_mask=key_mask, mask=mask, scores=scores,
                                         dropout_rate=dropout_rate, dropout_rng=dropout_rng)
  if implementation == "cudnn":
    if scores:
      raise ValueError(
          f"attention: implementation='cudnn' returns no scores but scores={scores} were requested; "
          "use implementation='xla' (or 'auto', which picks one that can)")
    return cudnn_attention(q, k, v, key_bias, key_mask, mask), {}
  if implementation == "pallas":
    return _pallas(q, k, v, key_bias, key_mask, mask, scores, interpret, backend, batch_axis)
  raise ValueError(f"attention: unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS}")
