"""Quantizers for visual tokenizers: VQ, VQ-EMA, FSQ, LFQ, and a diagonal Gaussian posterior.

Every quantizer is a flax.linen Module with one contract, so autoencoders and trainers treat them
alike:

    zq, out = quantizer.apply(variables, z, train=..., mutable=["quantizer_state"])
    z:   (B, H, W, D) or (B, N, D) (any (..., D) works), any float dtype
    zq:  same shape and dtype as z; forward value = the quantized latent, backward = straight-through
    out: QuantizerOutput(codes: int32 (B, H, W) or (B, H, W, num_codebooks),
                         loss: float32 scalar, already weighted, to add to the reconstruction loss,
                         metrics: {"perplexity", "usage", ...} float32 scalars)
    quantizer.codes_to_latent(codes) -> zq          (apply(..., method="codes_to_latent"))
    quantizer.codebook_size: int                    entries per codebook
    quantizer.bits_per_token: float                 log2(codebook_size) * num_codebooks

Math runs in float32 whatever the input dtype (z is cast in, zq cast back). Mutable state (the EMA
codebook) lives in the "quantizer_state" collection: `train=True` updates it, so pass
`mutable=["quantizer_state"]`. With `axis_name` set, batch statistics (code histograms, EMA counts
and sums, LFQ's batch entropy) are reduced over that named axis with lax.psum, so a data-parallel
step under jax.shard_map equals the single-device step on the global batch.

Reference parity (tests/golden/quantizers.*): VectorQuantizerEMA, FSQ and LFQ equal
lucidrains/vector-quantize-pytorch; FSQ also equals the official FSQ notebook with the `tan` of
its bound replaced by `arctanh`, as the FSQ authors corrected it (vector-quantize-pytorch#94).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

QUANTIZER_STATE = "quantizer_state"
INDEX_DTYPE = jnp.int32
MAX_CODEBOOK_SIZE = 2**31  # indices 0 .. 2**31 - 1 fit INDEX_DTYPE


@flax.struct.dataclass
class QuantizerOutput:
  """What a quantizer returns beside the quantized latent.

  Attributes:
    codes: int32 (B, H, W) / (B, N), or (..., num_codebooks) for factorised quantizers (LFQ with
      num_codebooks > 1). None for the continuous DiagonalGaussian posterior.
    loss: float32 scalar auxiliary loss, already weighted (add it to the reconstruction loss).
    metrics: float32 scalars; discrete quantizers always have "perplexity" (exp of the entropy of
      this batch's code histogram) and "usage" (fraction of codebook entries used in this batch).
  """
  codes: Array | None
  loss: Array
  metrics: dict[str, Array]


# ------------------------------------------------------------------------------------ helpers


def _check_codebook_size(size: int, field: str, owner: str) -> None:
  if size < 2:
    raise ValueError(f"{owner}.{field}: a codebook needs at least 2 entries; got {size}")
  if size > MAX_CODEBOOK_SIZE:
    raise ValueError(f"{owner}.{field}: {size} entries do not fit int32 indices (at most 2**31 = {MAX_CODEBOOK_SIZE}); "
                     "use a smaller codebook or factorise it")


def _check_positive(value: float, field: str, owner: str) -> None:
  if not value > 0:
    raise ValueError(f"{owner}.{field}: must be > 0; got {value!r}")


def _check_latent(z: Array, dim: int, field: str, owner: str) -> None:
  if z.ndim < 2:
    raise ValueError(f"{owner}: z must be (B, H, W, D) or (B, N, D); got shape {z.shape}")
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise ValueError(f"{owner}: z must be floating point; got dtype {z.dtype}")
  if z.shape[-1] != dim:
    raise ValueError(f"{owner}.{field}: z has D = {z.shape[-1]} channels but {field} gives {dim}; project the encoder "
                     f"output to {dim} channels or change {field}")


def _straight_through(x: Array, q: Array) -> Array:
  """Forward value q, gradient identity wrt x."""
  return x + jax.lax.stop_gradient(q - x)


def _l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  """x / max(||x||, sqrt(eps)) over the last axis (magvit's l2_normalize)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def _mean_f32(x: Array) -> Array:
  return jnp.mean(x, dtype=jnp.float32)


def squared_distances(x: Array, codebook: Array, *, precision: Any = jax.lax.Precision.HIGHEST) -> Array:
  """||x_i - e_k||^2 as (||x||^2 + ||e||^2) - 2 x.e (the order lucidrains' cdist uses).

  Args:
    x: (N, D) float32.
    codebook: (K, D) float32.

  Returns:
    (N, K) float32.
  """
  x2 = jnp.sum(x * x, axis=-1)
  e2 = jnp.sum(codebook * codebook, axis=-1)
  xe = jnp.dot(x, codebook.T, precision=precision)
  return (x2[:, None] + e2[None, :]) - 2.0 * xe


def code_counts(codes: Array, codebook_size: int, *, axis_name: str | None = None) -> Array:
  """Histogram of codes per codebook.

  Args:
    codes: (N, C) int indices in [0, codebook_size).
    codebook_size: K.
    axis_name: when given, counts are summed over that named (data) axis.

  Returns:
    (C, K) int32 counts.
  """
  counts = jax.vmap(lambda c: jnp.bincount(c, length=codebook_size), in_axes=1)(codes).astype(jnp.int32)
  if axis_name is not None:
    counts = jax.lax.psum(counts, axis_name)
  return counts


def histogram_metrics(counts: Array) -> dict[str, Array]:
  """Perplexity exp(H(p)) and usage mean(count > 0) of code histograms, averaged over codebooks.

  Args:
    counts: (C, K) or (K,) code counts (e.g. accumulated over a whole eval set).

  Returns:
    {"perplexity": float32 scalar, "usage": float32 scalar}.
  """
  counts = jnp.asarray(counts, jnp.float32).reshape(-1, counts.shape[-1])
  p = counts / jnp.maximum(counts.sum(axis=-1, keepdims=True), 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
  return {"perplexity": jnp.mean(jnp.exp(entropy)), "usage": jnp.mean((counts > 0).astype(jnp.float32))}


def _clamped_entropy(p: Array, eps: float = 1e-5) -> Array:
  """-sum p log(max(p, eps)) over the last axis (lucidrains' LFQ entropy)."""
  return -jnp.sum(p * jnp.log(jnp.maximum(p, eps)), axis=-1)


# ------------------------------------------------------------------------------ VQ (gradient)


class VectorQuantizer(nn.Module):
  """VQ-VAE quantizer with a trained codebook (van den Oord et al. 2017; maskgit / magvit).

  loss = mean((e - sg(z))^2) + commitment_cost * mean((sg(e) - z)^2); the codebook is the "params"
  entry "codebook" (codebook_size, dim), initialised like maskgit/magvit/sonnet
  (variance_scaling(1, fan_in, uniform)). With `l2_normalize` both z and the codebook are
  l2-normalised before the lookup (magvit's latent_normalize, i.e. cosine VQ): zq is then the unit
  code and the straight-through gradient is identity wrt the normalised z.

  Attributes:
    codebook_size: K entries.
    dim: D, the channels of z.
    commitment_cost: beta on the commitment (encoder) term.
    l2_normalize: cosine VQ.
    axis_name: named data axis for the code histogram (metrics only).
    embedding_init: codebook initialiser, called with (rng, (K, D), float32).
  """
  codebook_size: int
  dim: int
  commitment_cost: float = 0.25
  l2_normalize: bool = False
  axis_name: str | None = None
  embedding_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")

  def __post_init__(self):
    _check_codebook_size(self.codebook_size, "codebook_size", type(self).__name__)
    _check_positive(self.dim, "dim", type(self).__name__)
    super().__post_init__()

  @property
  def bits_per_token(self) -> float:
    return math.log2(self.codebook_size)

  def setup(self):
    self.codebook = self.param("codebook", self.embedding_init, (self.codebook_size, self.dim), jnp.float32)

  def _lookup_table(self) -> Array:
    codebook = jnp.asarray(self.codebook, jnp.float32)
    return _l2_normalize(codebook) if self.l2_normalize else codebook

  def __call__(self, z: Array, *, train: bool) -> tuple[Array, QuantizerOutput]:
    """(..., D) -> (zq (..., D), QuantizerOutput(codes (...,) int32)). `train` changes nothing here."""
    del train  # no state; the loss is computed in both modes
    _check_latent(z, self.dim, "dim", type(self).__name__)
    x = z.astype(jnp.float32).reshape(-1, self.dim)
    if self.l2_normalize:
      x = _l2_normalize(x)
    codebook = self._lookup_table()
    codes = jnp.argmin(squared_distances(x, codebook), axis=-1).astype(INDEX_DTYPE)
    q = jnp.take(codebook, codes, axis=0)
    codebook_loss = _mean_f32((q - jax.lax.stop_gradient(x))**2)
    commitment = _mean_f32((jax.lax.stop_gradient(q) - x)**2)
    metrics = histogram_metrics(code_counts(codes[:, None], self.codebook_size, axis_name=self.axis_name))
    metrics.update(codebook_loss=codebook_loss, commitment=commitment)
    zq = _straight_through(x, q).reshape(z.shape).astype(z.dtype)
    out = QuantizerOutput(codes=codes.reshape(z.shape[:-1]), loss=codebook_loss + self.commitment_cost * commitment,
                          metrics=metrics)
    return zq, out

  def codes_to_latent(self, codes: Array) -> Array:
    """int codes (...) -> float32 latent (..., D): the (normalised, with l2_normalize) codebook rows."""
    return jnp.take(self._lookup_table(), codes, axis=0)


# ---------------------------------------------------------------------------------- VQ-EMA


def _ema(old: Array, new: Array, decay: float) -> Array:
  """torch's old.lerp_(new, 1 - decay), as lucidrains' ema_inplace."""
  return old + (1.0 - decay) * (new - old)


def laplace_smoothed_sizes(cluster_size: Array, eps: float) -> Array:
  """(N_k + eps) / (n + K eps) * n with n = sum_k N_k: never zero, same total.

  Args:
    cluster_size: (K,) EMA counts.
  """
  total = jnp.sum(cluster_size)
  return (cluster_size + eps) / (total + cluster_size.shape[0] * eps) * total


def sample_global_rows(key: Array, x: Array, num: int, *, axis_name: str | None = None) -> Array:
  """`num` rows of the global batch (x concatenated over `axis_name` in device order), replicated.

  Rows are drawn without replacement when the global batch has at least `num` rows (a random
  permutation, as torch.randperm in lucidrains' sample_vectors), else with replacement. Under a
  named axis every device draws the same global indices (key is replicated), contributes the rows
  it owns and zeros elsewhere, and a psum assembles them: the same rows a single device would pick
  from the whole batch, moving (num, D) floats instead of the batch.

  Args:
    key: PRNG key, identical on all devices.
    x: (N_local, D).
    num: rows to draw.

  Returns:
    (num, D) rows, identical on all devices.
  """
  n_local = x.shape[0]
  n_devices = 1 if axis_name is None else jax.lax.axis_size(axis_name)
  n_global = n_local * n_devices
  if n_global >= num:
    idx = jax.random.permutation(key, n_global)[:num]
  else:
    idx = jax.random.randint(key, (num,), 0, n_global)
  if axis_name is None:
    return jnp.take(x, idx, axis=0)
  mine = (idx // n_local) == jax.lax.axis_index(axis_name)
  rows = jnp.where(mine[:, None], jnp.take(x, idx % n_local, axis=0), 0.0)
  return jax.lax.psum(rows, axis_name)


class VectorQuantizerEMA(nn.Module):
  """VQ with an exponential-moving-average codebook (VQ-VAE appendix; lucidrains' EuclideanCodebook).

  State ("quantizer_state"): codebook (K, D), cluster_size (K,) initialised to ones, embed_sum (K, D)
  initialised to the codebook (lucidrains' init, which needs no zero-debiasing), and step () int32.
  One training step, from the codes found with the codebook *before* the update:

      n_k = #{i: code_i = k},  s_k = sum_{code_i = k} z_i       (psum over axis_name)
      N_k <- decay N_k + (1 - decay) n_k;  m_k <- decay m_k + (1 - decay) s_k
      e_k <- m_k / laplace(N)_k,  laplace(N)_k = (N_k + eps) / (sum N + K eps) * sum N
      dead codes (N_k < dead_code_threshold, after the EMA): e_k <- a random row of the global
      batch, N_k <- threshold, m_k <- e_k * threshold            (lucidrains' expire_codes_)

  The restart draw is a function of (seed, step) and the global batch, so single- and multi-device
  runs restart the same codes with the same rows. loss = commitment_cost * mean((sg(e) - z)^2).

  Attributes:
    codebook_size: K entries.
    dim: D, the channels of z.
    commitment_cost: beta (lucidrains' commitment_weight; 0.25 in the paper).
    decay: EMA decay (0.99 in the VQ-VAE paper, 0.8 lucidrains' default).
    eps: Laplace smoothing epsilon.
    dead_code_threshold: restart codes whose EMA count falls below it; 0 turns restarts off.
    axis_name: named data axis to psum counts, sums and histograms over.
    seed: seed of the restart draws (folded with the step counter).
    embedding_init: initial codebook, called with (rng, (K, D), float32).
  """
  codebook_size: int
  dim: int
  commitment_cost: float = 0.25
  decay: float = 0.99
  eps: float = 1e-5
  dead_code_threshold: float = 0.0
  axis_name: str | None = None
  seed: int = 0
  embedding_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")

  def __post_init__(self):
    owner = type(self).__name__
    _check_codebook_size(self.codebook_size, "codebook_size", owner)
    _check_positive(self.dim, "dim", owner)
    if not 0.0 <= self.decay < 1.0:
      raise ValueError(f"{owner}.decay: must be in [0, 1); got {self.decay!r}")
    _check_positive(self.eps, "eps", owner)
    if self.dead_code_threshold < 0:
      raise ValueError(f"{owner}.dead_code_threshold: must be >= 0 (0 turns restarts off); got {self.dead_code_threshold!r}")
    super().__post_init__()

  @property
  def bits_per_token(self) -> float:
    return math.log2(self.codebook_size)

  def setup(self):
    shape = (self.codebook_size, self.dim)
    self.codebook = self.variable(QUANTIZER_STATE, "codebook",
                                  lambda: self.embedding_init(self.make_rng("params"), shape, jnp.float32))
    self.cluster_size = self.variable(QUANTIZER_STATE, "cluster_size", jnp.ones, (self.codebook_size,), jnp.float32)
    self.embed_sum = self.variable(QUANTIZER_STATE, "embed_sum", lambda: self.codebook.value)
    self.step = self.variable(QUANTIZER_STATE, "step", jnp.zeros, (), jnp.int32)

  def __call__(self, z: Array, *, train: bool) -> tuple[Array, QuantizerOutput]:
    """(..., D) -> (zq (..., D), QuantizerOutput(codes (...,) int32)); train=True updates the state."""
    _check_latent(z, self.dim, "dim", type(self).__name__)
    x = z.astype(jnp.float32).reshape(-1, self.dim)
    codebook = self.codebook.value
    codes = jnp.argmin(squared_distances(x, codebook), axis=-1).astype(INDEX_DTYPE)
    q = jnp.take(codebook, codes, axis=0)
    commitment = _mean_f32((jax.lax.stop_gradient(q) - x)**2)
    metrics = histogram_metrics(code_counts(codes[:, None], self.codebook_size, axis_name=self.axis_name))
    metrics["commitment"] = commitment
    dead = jnp.zeros((), jnp.float32)
    if train and not self.is_initializing():
      dead = self._update(jax.lax.stop_gradient(x), codes)
    metrics["dead_codes"] = dead
    zq = _straight_through(x, q).reshape(z.shape).astype(z.dtype)
    return zq, QuantizerOutput(codes=codes.reshape(z.shape[:-1]), loss=self.commitment_cost * commitment,
                               metrics=metrics)

  def _update(self, x: Array, codes: Array) -> Array:
    """One EMA step from the batch x (N, D) and its codes (N,); returns the number of restarted codes."""
    onehot = jax.nn.one_hot(codes, self.codebook_size, dtype=jnp.float32)  # (N, K)
    counts = jnp.sum(onehot, axis=0)
    sums = jnp.dot(onehot.T, x, precision=jax.lax.Precision.HIGHEST)  # (K, D)
    if self.axis_name is not None:
      counts, sums = jax.lax.psum((counts, sums), self.axis_name)
    cluster_size = _ema(self.cluster_size.value, counts, self.decay)
    embed_sum = _ema(self.embed_sum.value, sums, self.decay)
    codebook = embed_sum / laplace_smoothed_sizes(cluster_size, self.eps)[:, None]
    num_dead = jnp.zeros((), jnp.float32)
    if self.dead_code_threshold > 0:
      dead = cluster_size < self.dead_code_threshold
      key = jax.random.fold_in(jax.random.key(self.seed), self.step.value)
      rows = sample_global_rows(key, x, self.codebook_size, axis_name=self.axis_name)
      codebook = jnp.where(dead[:, None], rows, codebook)
      cluster_size = jnp.where(dead, jnp.float32(self.dead_code_threshold), cluster_size)
      embed_sum = jnp.where(dead[:, None], rows * jnp.float32(self.dead_code_threshold), embed_sum)
      num_dead = jnp.sum(dead, dtype=jnp.float32)
    self.codebook.value = codebook
    self.cluster_size.value = cluster_size
    self.embed_sum.value = embed_sum
    self.step.value = self.step.value + 1
    return num_dead

  def codes_to_latent(self, codes: Array) -> Array:
    """int codes (...) -> float32 latent (..., D): the current codebook rows."""
    return jnp.take(self.codebook.value, codes, axis=0)


# --------------------------------------------------------------------------------------- FSQ


class FSQ(nn.Module):
  """Finite scalar quantization (Mentzer et al., ICLR 2024): no codebook, no auxiliary loss.

  Channel j of z is bounded to L_j levels and rounded:

      half_l = (L - 1) (1 - eps) / 2;  offset = 0.5 if L even else 0;  shift = arctanh(offset / half_l)
      zhat = round_ste(tanh(z + shift) half_l - offset) / (L // 2)          # values in [-1, 1]

  The official notebook has `tan` for the shift; its authors confirmed `arctanh` is meant
  (vector-quantize-pytorch#94). lucidrains' FSQ writes half_l with (1 + eps): that is eps = -1e-3
  here. Valid eps satisfy |eps| < 1 / (max(L) - 1) (every level reachable, none extra); L = 2 needs
  eps < 0 (the arctanh shift is infinite otherwise; issue #237: use LFQ for binary codes).
  Index = sum_j level_j * prod(L_<j) (channel 0 least significant), codebook_size = prod(levels).
  The straight-through gradient passes the bound: d zq / dz = tanh'(z + shift) half_l / (L // 2).

  Attributes:
    levels: levels per channel; z must have len(levels) channels.
    eps: bound margin (see above).
    axis_name: named data axis for the code histogram (metrics only).
  """
  levels: Sequence[int]
  eps: float = 1e-3
  axis_name: str | None = None

  def __post_init__(self):
    owner = type(self).__name__
    try:
      levels = tuple(int(v) for v in self.levels)
    except (TypeError, ValueError):
      raise ValueError(f"{owner}.levels: expected a sequence of ints; got {self.levels!r}") from None
    if not levels:
      raise ValueError(f"{owner}.levels: needs at least one channel, e.g. [8, 5, 5, 5]; got {self.levels!r}")
    for j, level in enumerate(levels):
      if level < 2:
        raise ValueError(f"{owner}.levels: levels[{j}] = {level} cannot form a codebook; every level must be >= 2")
    if 2 in levels and not self.eps < 0:
      raise ValueError(f"{owner}.levels: a level of 2 makes the arctanh shift infinite with eps = {self.eps}; "
                       "use levels >= 3, LFQ for binary codes, or eps < 0 (lucidrains' convention)")
    _check_codebook_size(math.prod(levels), "levels (their product)", owner)
    if not abs(self.eps) < 1.0 / (max(levels) - 1):
      raise ValueError(f"{owner}.eps: |eps| must be < 1 / (max(levels) - 1) = {1.0 / (max(levels) - 1):.4g} so that "
                       f"each channel takes exactly L values; got {self.eps!r}")
    object.__setattr__(self, "levels", levels)
    super().__post_init__()

  @property
  def codebook_size(self) -> int:
    return math.prod(self.levels)

  @property
  def bits_per_token(self) -> float:
    return math.log2(self.codebook_size)

  def _constants(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """float32 half_l, offset, shift, half_width (d,), and int32 basis (d,)."""
    levels = np.asarray(self.levels, np.float64)
    half_l = (levels - 1) * (1 - self.eps) / 2
    offset = np.where(levels % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(offset / half_l)
    half_width = np.floor_divide(levels, 2)
    basis = np.cumprod([1] + list(self.levels[:-1])).astype(np.int64)
    f32 = lambda a: a.astype(np.float32)
    return f32(half_l), f32(offset), f32(shift), f32(half_width), basis.astype(np.int32)

  def bound(self, z: Array) -> Array:
    """(..., d) float32 -> (..., d) in (-half_l - offset, half_l - offset)."""
    half_l, offset, shift, _, _ = self._constants()
    return jnp.tanh(z + shift) * half_l - offset

  def __call__(self, z: Array, *, train: bool) -> tuple[Array, QuantizerOutput]:
    """(..., d) -> (zq (..., d) in [-1, 1], QuantizerOutput(codes (...,) int32, loss 0))."""
    del train
    _check_latent(z, len(self.levels), "levels", type(self).__name__)
    _, _, _, half_width, basis = self._constants()
    bounded = self.bound(z.astype(jnp.float32))
    rounded = jnp.round(bounded)
    zhat = _straight_through(bounded, rounded) / half_width
    level_idx = jax.lax.stop_gradient(rounded + half_width).astype(INDEX_DTYPE)
    codes = jnp.sum(level_idx * basis, axis=-1, dtype=INDEX_DTYPE)
    metrics = histogram_metrics(code_counts(codes.reshape(-1, 1), self.codebook_size, axis_name=self.axis_name))
    return zhat.astype(z.dtype), QuantizerOutput(codes=codes, loss=jnp.zeros((), jnp.float32), metrics=metrics)

  def latent_to_codes(self, latent: Array) -> Array:
    """Quantized latent (..., d) (values k / (L // 2)) -> int32 codes (...); inverse of codes_to_latent."""
    _, _, _, half_width, basis = self._constants()
    level_idx = jnp.round(jnp.asarray(latent, jnp.float32) * half_width + half_width).astype(INDEX_DTYPE)
    return jnp.sum(level_idx * basis, axis=-1, dtype=INDEX_DTYPE)

  def codes_to_latent(self, codes: Array) -> Array:
    """int codes (...) -> float32 (..., d) in [-1, 1]."""
    _, _, _, half_width, basis = self._constants()
    level_idx = (jnp.asarray(codes, INDEX_DTYPE)[..., None] // basis) % np.asarray(self.levels, np.int32)
    return (level_idx.astype(jnp.float32) - half_width) / half_width


# --------------------------------------------------------------------------------------- LFQ


class LFQ(nn.Module):
  """Lookup-free quantization (MAGVIT-v2): sign quantisation with an entropy penalty.

  z (..., D) splits into num_codebooks groups of b = D / num_codebooks channels, each quantised to
  {-s, +s}^b (s = codebook_scale), so every group has an implicit codebook of K = 2^b entries:

      q = where(z > 0, s, -s);  code = sum_j 1[z_j > 0] 2^(b-1-j)     (channel 0 most significant,
                                                                       as lucidrains' LFQ)
      commitment = mean((z - sg(q))^2)
      p_i = softmax(2 z_i . c_k / temperature over the K codes c_k)   per group
      per_sample_entropy = mean_i H(p_i);  codebook_entropy = mean_groups H(mean_i p_i)
      loss = entropy_weight (per_sample_entropy - diversity_gamma codebook_entropy)
             + commitment_weight commitment

  with H(p) = -sum p log(max(p, 1e-5)) as lucidrains. mean_i p_i is pmean-ed over axis_name.
  The (N, K) probabilities make large b expensive: factorise (e.g. 18 bits as num_codebooks=2 of 9,
  MAGVIT-v2 / Open-MAGVIT2's "factorized" codebooks). entropy_weight=0 skips them entirely.
  Defaults follow the MAGVIT-v2 author (vector-quantize-pytorch#88): 0.25 commitment, 0.1 entropy,
  temperature 0.01.

  Attributes:
    dim: D, the channels of z (total bits per token).
    num_codebooks: groups; codes are (...,) for 1 and (..., num_codebooks) otherwise.
    codebook_scale: s.
    commitment_weight, entropy_weight, diversity_gamma, temperature: see above.
    axis_name: named data axis for the batch entropy and histograms.
  """
  dim: int
  num_codebooks: int = 1
  codebook_scale: float = 1.0
  commitment_weight: float = 0.25
  entropy_weight: float = 0.1
  diversity_gamma: float = 1.0
  temperature: float = 0.01
  axis_name: str | None = None

  def __post_init__(self):
    owner = type(self).__name__
    _check_positive(self.dim, "dim", owner)
    _check_positive(self.num_codebooks, "num_codebooks", owner)
    if self.dim % self.num_codebooks:
      raise ValueError(f"{owner}.num_codebooks: must divide dim = {self.dim}; got {self.num_codebooks}")
    bits = self.dim // self.num_codebooks
    if 2**bits > MAX_CODEBOOK_SIZE:
      raise ValueError(f"{owner}.num_codebooks: {bits} bits per codebook give 2**{bits} codes, which do not fit int32 "
                       f"indices; use num_codebooks >= {-(-self.dim // 31)} so each codebook has at most 31 bits")
    _check_positive(self.codebook_scale, "codebook_scale", owner)
    _check_positive(self.temperature, "temperature", owner)
    super().__post_init__()

  @property
  def codebook_bits(self) -> int:
    return self.dim // self.num_codebooks

  @property
  def codebook_size(self) -> int:
    return 2**self.codebook_bits

  @property
  def bits_per_token(self) -> float:
    return float(self.dim)

  def _bit_weights(self) -> np.ndarray:
    return (2**np.arange(self.codebook_bits - 1, -1, -1)).astype(np.int32)

  def implicit_codebook(self) -> Array:
    """(K, b) float32 codes in index order (row k has the bits of k, most significant first)."""
    bits = (np.arange(self.codebook_size)[:, None] & self._bit_weights()) != 0
    return jnp.asarray(np.where(bits, self.codebook_scale, -self.codebook_scale), jnp.float32)

  def __call__(self, z: Array, *, train: bool) -> tuple[Array, QuantizerOutput]:
    """(..., D) -> (zq (..., D) in {-s, s}, QuantizerOutput(codes (...,) or (..., num_codebooks) int32))."""
    del train
    _check_latent(z, self.dim, "dim", type(self).__name__)
    c, b = self.num_codebooks, self.codebook_bits
    x = z.astype(jnp.float32).reshape(-1, c, b)
    positive = x > 0
    q = jnp.where(positive, jnp.float32(self.codebook_scale), jnp.float32(-self.codebook_scale))
    codes = jnp.sum(positive.astype(INDEX_DTYPE) * self._bit_weights(), axis=-1, dtype=INDEX_DTYPE)  # (N, C)
    commitment = _mean_f32((x - jax.lax.stop_gradient(q))**2)
    metrics = histogram_metrics(code_counts(codes, self.codebook_size, axis_name=self.axis_name))
    metrics["commitment"] = commitment
    loss = self.commitment_weight * commitment
    if self.entropy_weight:
      per_sample, codebook_entropy = self.entropy_terms(x)
      metrics.update(per_sample_entropy=per_sample, codebook_entropy=codebook_entropy)
      loss = loss + self.entropy_weight * (per_sample - self.diversity_gamma * codebook_entropy)
    zq = _straight_through(x, q).reshape(z.shape).astype(z.dtype)
    codes = codes.reshape(z.shape[:-1] + ((c,) if c > 1 else ()))
    return zq, QuantizerOutput(codes=codes, loss=loss, metrics=metrics)

  def entropy_terms(self, x: Array) -> tuple[Array, Array]:
    """(per-sample entropy, codebook entropy) of x (N, C, b) float32 against the implicit codebook."""
    logits = 2.0 * jnp.einsum("ncb,kb->nck", x, self.implicit_codebook(),
                              precision=jax.lax.Precision.HIGHEST) / self.temperature
    probs = jax.nn.softmax(logits, axis=-1)  # (N, C, K)
    per_sample = jnp.mean(_clamped_entropy(probs))
    avg_probs = jnp.mean(probs, axis=0)  # (C, K)
    if self.axis_name is not None:
      avg_probs = jax.lax.pmean(avg_probs, self.axis_name)
    return per_sample, jnp.mean(_clamped_entropy(avg_probs))

  def latent_to_codes(self, latent: Array) -> Array:
    """Latent (..., D) -> int32 codes (...) or (..., num_codebooks) from its signs; inverse of codes_to_latent."""
    latent = jnp.asarray(latent).reshape(latent.shape[:-1] + (self.num_codebooks, self.codebook_bits))
    codes = jnp.sum((latent > 0).astype(INDEX_DTYPE) * self._bit_weights(), axis=-1, dtype=INDEX_DTYPE)
    return codes if self.num_codebooks > 1 else codes[..., 0]

  def codes_to_latent(self, codes: Array) -> Array:
    """int codes (...) or (..., num_codebooks) -> float32 (..., D) in {-s, s}."""
    codes = jnp.asarray(codes, INDEX_DTYPE)
    if self.num_codebooks == 1:
      codes = codes[..., None]
    bits = (codes[..., None] & self._bit_weights()) != 0  # (..., C, b)
    latent = jnp.where(bits, jnp.float32(self.codebook_scale), jnp.float32(-self.codebook_scale))
    return latent.reshape(codes.shape[:-1] + (self.dim,))


# ------------------------------------------------------------------------ continuous (KL) latent


def latent_scale_factor(latents: Array) -> float:
  """1 / std of latents, the factor that gives a generator unit-variance inputs (LDM/MAR: 0.2325).

  Args:
    latents: (...,) samples of the posterior over a representative set of images.
  """
  return float(1.0 / np.std(np.asarray(latents, np.float64)))


class DiagonalGaussian(nn.Module):
  """Diagonal Gaussian posterior of a KL autoencoder (LDM / MAR AutoencoderKL's DiagonalGaussianDistribution).

  Follows the quantizer contract where it makes sense, with these differences:
  - z is (..., 2C): mean = z[..., :C], logvar = z[..., C:] clipped to [-30, 20]; zq is (..., C),
    a posterior sample when train=True (rng stream "sample": apply(..., rngs={"sample": key})) and
    the mode (mean) when train=False. zq is what the decoder consumes, unscaled.
  - codes is None; there is no codebook_size, bits_per_token or codes_to_latent.
  - loss = kl_weight * KL(q || N(0, I)) summed over the latent of each example, averaged over the
    batch (LDM's kl_loss / batch); metrics: "kl" (that unweighted KL), "posterior_std".
  - generators see latents * scale_factor (`scale`) and hand back `unscale`-d latents to the
    decoder; estimate the factor with `latent_scale_factor` after training.

  Attributes:
    kl_weight: weight of the KL term (LDM's 1e-6).
    scale_factor: latent scale for generators (MAR: 0.2325).
  """
  kl_weight: float = 1e-6
  scale_factor: float = 1.0

  def __post_init__(self):
    owner = type(self).__name__
    if self.kl_weight < 0:
      raise ValueError(f"{owner}.kl_weight: must be >= 0; got {self.kl_weight!r}")
    _check_positive(self.scale_factor, "scale_factor", owner)
    super().__post_init__()

  def moments(self, z: Array) -> tuple[Array, Array]:
    """(..., 2C) -> float32 mean (..., C), logvar (..., C) clipped to [-30, 20]."""
    if z.ndim < 2 or z.shape[-1] % 2:
      raise ValueError(f"{type(self).__name__}: z must be (..., 2C) with mean and logvar halves; got shape {z.shape}")
    mean, logvar = jnp.split(z.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def __call__(self, z: Array, *, train: bool) -> tuple[Array, QuantizerOutput]:
    """(..., 2C) -> (latent (..., C) in z's dtype, QuantizerOutput(codes=None, loss=weighted KL))."""
    mean, logvar = self.moments(z)
    std = jnp.exp(0.5 * logvar)
    if train:
      latent = mean + std * jax.random.normal(self.make_rng("sample"), mean.shape, jnp.float32)
    else:
      latent = mean
    kl = self.kl(mean, logvar)
    metrics = {"kl": kl, "posterior_std": jnp.mean(std)}
    return latent.astype(z.dtype), QuantizerOutput(codes=None, loss=self.kl_weight * kl, metrics=metrics)

  @staticmethod
  def kl(mean: Array, logvar: Array) -> Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over all but the batch axis, averaged over it."""
    per_example = 0.5 * jnp.sum((mean**2 + jnp.exp(logvar) - 1.0 - logvar).reshape(mean.shape[0], -1), axis=-1)
    return jnp.mean(per_example)

  def scale(self, latent: Array) -> Array:
    """Decoder latent -> generator latent (times scale_factor)."""
    return latent * self.scale_factor

  def unscale(self, latent: Array) -> Array:
    """Generator latent -> decoder latent (divided by scale_factor)."""
    return latent / self.scale_factor
