"""xAR: next-X autoregressive generation with flow matching (Ren et al. 2025, OliverRensu/xAR).

The network equals the official `models/xar.py` (checked by tests/models/test_xar_parity.py):

  tokens (B, L, C) -> z_proj -> + encoder_pos_embed -> RMSNorm(weight) -> encoder AdaLN blocks
    -> RMSNorm(weight) -> decoder_embed -> + decoder_pos_embed -> decoder AdaLN blocks
    -> RMSNorm(weight) -> pred -> velocity (B, L, C)

  AdaLN block: c = class_emb(y) + time_embed(floor(1000 t_entity)), one per (sample, entity);
    gamma1, gamma2, scale1, scale2, shift1, shift2 = Linear(SiLU(c), 6D)
    x += gamma1 * Attn(RMSNorm(x) * (1 + scale1) + shift1)      RMSNorm without weight, eps 1e-6
    x += gamma2 * GeGLU(RMSNorm(x) * (1 + scale2) + shift2)      timm SwiGLU with exact GELU
  Attention: qkv with bias, 2-D RoPE (EVA-02 interleaved pairs; rows on the first half of the head
    dim, columns on the second) at each token's grid position, block-causal mask (bidirectional
    inside an entity, causal across entities), through tokax.kernels.attention.

What generalises the official code: the entity grouping (tokax.models.entities: patch, k x k
cell, subsample, scale, whole image on any grid and latent width), the class count, and sampling
entity by entity with a functional KV cache inside one jit (`sample`). Dropout as the official
code has it: `attn_dropout` on the attention probabilities (torch SDPA's dropout_p; it sends
training attention through kernels.attention's "xla" implementation) and `dropout` on the
projections and the MLP; both 0 by default, as the official model class.

Sequences are in entity order: use `model.entities.to_sequence` / `from_sequence` to go from and
to the (B, G, G, C) latent grid.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokax import kernels
from tokax.models.entities import Entities, make_entities

Array = jax.Array
Dtype = Any
Cache = dict[str, list[tuple[Array, Array]]]

TIME_BINS = 1000  # the official model embeds floor(1000 t)
XAR_VARIANTS = {  # name -> (width, encoder depth, decoder depth, heads), official xar_base/large/huge
    "B": (768, 8, 8, 12),
    "L": (1024, 16, 16, 16),
    "H": (1280, 20, 20, 16),
}


def rms_norm(x: Array, eps: float = 1e-6) -> Array:
  """x * rsqrt(mean(x^2) + eps) over the last axis, computed in float32, returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


class RMSNorm(nn.Module):
  """RMSNorm with a learned per-channel scale (the official RMSNorm(weight=True))."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    return rms_norm(x) * scale.astype(self.dtype)


def timestep_embedding(t: Array, dim: int = 256, max_period: float = 10000.0) -> Array:
  """(...,) float -> (..., dim) [cos(t f), sin(t f)] with f = max_period^(-i / (dim/2)) (DiT/GLIDE)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[..., None] * freqs
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[..., :1])], axis=-1)
  return emb


def time_bins(t: Array) -> Array:
  """Flow time t in [0, 1] -> the official model's integer time input floor(1000 t), as float32."""
  return jnp.floor(t.astype(jnp.float32) * TIME_BINS)


class TimestepEmbedder(nn.Module):
  """Sinusoid (256) -> Linear -> SiLU -> Linear, as DiT."""
  width: int
  frequency_dim: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: Array) -> Array:
    h = nn.Dense(self.width, dtype=self.dtype, name="mlp_0")(timestep_embedding(t, self.frequency_dim))
    return nn.Dense(self.width, dtype=self.dtype, name="mlp_2")(nn.silu(h))


def rope_tables(positions: np.ndarray, head_dim: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
  """EVA-02 2-D rotary tables for (L, 2) (row, col) positions -> cos, sin of shape (L, head_dim).

  Each axis rotates head_dim / 2 channels in interleaved pairs with head_dim / 4 frequencies
  theta^(-2i / (head_dim / 2)); rows take the first half of the head dim, columns the second.
  """
  if head_dim % 4:
    raise ValueError(f"xAR: head dim (width / num_heads) must be a multiple of 4 for 2-D RoPE; got {head_dim}")
  axis_dim = head_dim // 2
  freqs = 1.0 / theta ** (np.arange(0, axis_dim, 2)[: axis_dim // 2].astype(np.float32) / axis_dim)
  angles = [np.repeat(positions[:, a, None].astype(np.float32) * freqs, 2, axis=-1) for a in (0, 1)]
  angles = np.concatenate(angles, axis=-1)
  return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """x (B, N, H, Dh) rotated by the (N, Dh) tables: x cos + rotate_half(x) sin, pairs (x0, x1) -> (-x1, x0)."""
  pairs = x.reshape(*x.shape[:-1], -1, 2)
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
  return x * cos[:, None, :].astype(x.dtype) + rotated * sin[:, None, :].astype(x.dtype)


class Attention(nn.Module):
  """Self-attention with 2-D RoPE and a boolean mask; optionally against a KV cache.

  With `cache` = (k, v) of shape (B, L, H, Dh), this call's keys and values are written into it at
  `offset` and the queries attend over the whole cache (the mask hides what is not there yet);
  the updated cache is returned.
  """
  width: int
  num_heads: int
  implementation: str | None = None
  dtype: Dtype = jnp.float32
  attn_dropout: float = 0.0

  @nn.compact
  def __call__(self, x: Array, cos: Array, sin: Array, mask: Array | None,
               cache: tuple[Array, Array] | None = None, offset: Array | int = 0, deterministic: bool = True
               ) -> tuple[Array, tuple[Array, Array] | None]:
    b, n, _ = x.shape
    qkv = nn.Dense(3 * self.width, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(b, n, 3, self.num_heads, self.width // self.num_heads)
    q, k, v = apply_rope(qkv[:, :, 0], cos, sin), apply_rope(qkv[:, :, 1], cos, sin), qkv[:, :, 2]
    if cache is not None:
      k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, offset, 0, 0))
      v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, offset, 0, 0))
      cache = (k, v)
    rate = 0.0 if deterministic else self.attn_dropout
    out, _ = kernels.attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                               implementation=self.implementation if rate == 0.0 else "xla", dropout_rate=rate,
                               dropout_rng=self.make_rng("dropout") if rate > 0.0 else None)
    return nn.Dense(self.width, dtype=self.dtype, name="proj")(out.reshape(b, n, self.width)), cache


class GeGLU(nn.Module):
  """timm SwiGLU(act_layer=GELU): fc2(drop(gelu(fc1_g x) * fc1_x x)), then drop."""
  hidden: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    gate = nn.Dense(self.hidden, dtype=self.dtype, name="fc1_g")(x)
    h = nn.gelu(gate, approximate=False) * nn.Dense(self.hidden, dtype=self.dtype, name="fc1_x")(x)
    h = nn.Dropout(self.dropout)(h, deterministic)
    h = nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(h)
    return nn.Dropout(self.dropout)(h, deterministic)


class Block(nn.Module):
  """AdaLN transformer block; conditioning is per entity and gathered to the tokens."""
  width: int
  num_heads: int
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  implementation: str | None = None
  dtype: Dtype = jnp.float32
  attn_dropout: float = 0.0

  @nn.compact
  def __call__(self, x: Array, cond: Array, token_cond: Array, cos: Array, sin: Array, mask: Array | None,
               cache: tuple[Array, Array] | None = None, offset: Array | int = 0, deterministic: bool = True
               ) -> tuple[Array, tuple[Array, Array] | None]:
    """x (B, N, D); cond (B, E', D); token_cond (N,) int index into E' -> (B, N, D) and the cache."""
    ada = nn.Dense(6 * self.width, dtype=self.dtype, name="ada_lin")(nn.silu(cond))
    ada = jnp.take(ada.reshape(*ada.shape[:2], 6, self.width), token_cond, axis=1)  # (B, N, 6, D)
    gamma1, gamma2, scale1, scale2, shift1, shift2 = (ada[:, :, i] for i in range(6))
    attn = Attention(self.width, self.num_heads, self.implementation, self.dtype, self.attn_dropout, name="attn")
    y, cache = attn(rms_norm(x) * (1 + scale1) + shift1, cos, sin, mask, cache, offset, deterministic)
    x = x + nn.Dropout(self.dropout)(y, deterministic) * gamma1
    hidden = int(self.width * self.mlp_ratio * 2 / 3)
    y = GeGLU(hidden, self.dropout, self.dtype, name="mlp")(rms_norm(x) * (1 + scale2) + shift2, deterministic)
    return x + y * gamma2, cache


class XAR(nn.Module):
  """The xAR velocity network on one entity grouping; see the module docstring.

  Attributes:
    token_dim: C, the width of a latent token (16 for MAR's KL-16, 16 for 4x4 grey pixel patches).
    grid_size: G, the side of the latent token grid.
    entity: entity kind (tokax.models.entities.KINDS); entity_size: k (cell) or s (subsample);
      scales: resolutions for "scale" (() for the default).
    width, encoder_depth, decoder_depth, num_heads, mlp_ratio: the transformer (official B: 768,
      8, 8, 12, 4).
    num_classes: K; label K is the null class of classifier-free guidance.
    dropout: projection / MLP dropout in training.
    attn_dropout: dropout on the attention probabilities in training (official --attn_dropout).
    attention: kernels.attention implementation.
    dtype: computation dtype (parameters stay float32).
  """
  token_dim: int = 16
  grid_size: int = 16
  entity: str = "cell"
  entity_size: int = 8
  scales: tuple[int, ...] = ()
  width: int = 768
  encoder_depth: int = 8
  decoder_depth: int = 8
  num_heads: int = 12
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  dropout: float = 0.0
  attention: str | None = None
  dtype: Dtype = jnp.float32
  attn_dropout: float = 0.0

  @property
  def entities(self) -> Entities:
    size = self.entity_size if self.entity in ("cell", "subsample") else 0
    return make_entities(self.entity, self.grid_size, size, tuple(self.scales))

  @property
  def null_label(self) -> int:
    return self.num_classes

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  def setup(self):
    if self.width % self.num_heads:
      raise ValueError(f"XAR: width={self.width} must be a multiple of num_heads={self.num_heads}")
    ents = self.entities
    length, d = ents.seq_len, self.width
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    block = functools.partial(Block, d, self.num_heads, self.mlp_ratio, self.dropout, self.attention, self.dtype,
                              self.attn_dropout)
    normal = nn.initializers.normal(0.02)
    self.class_emb = nn.Embed(self.num_classes + 1, d, embedding_init=normal, name="class_emb")
    self.time_embed = TimestepEmbedder(d, dtype=self.dtype, name="time_embed")
    self.z_proj = dense(d, name="z_proj")
    self.z_proj_ln = RMSNorm(self.dtype, name="z_proj_ln")
    self.encoder_pos_embed = self.param("encoder_pos_embed", normal, (1, length, d))
    self.encoder_blocks = [block(name=f"encoder_blocks_{i}") for i in range(self.encoder_depth)]
    self.encoder_norm = RMSNorm(self.dtype, name="encoder_norm")
    self.decoder_embed = dense(d, name="decoder_embed")
    self.decoder_pos_embed = self.param("decoder_pos_embed", normal, (1, length, d))
    self.decoder_blocks = [block(name=f"decoder_blocks_{i}") for i in range(self.decoder_depth)]
    self.decoder_norm = RMSNorm(self.dtype, name="decoder_norm")
    self.pred = dense(self.token_dim, name="pred")

  def condition(self, labels: Array, t: Array) -> Array:
    """labels (B,) int, t (B, E) flow times -> (B, E, D) class + time conditioning."""
    return self.class_emb(labels)[:, None, :].astype(self.dtype) + self.time_embed(time_bins(t))

  def _tables(self) -> tuple[np.ndarray, np.ndarray]:
    return rope_tables(self.entities.positions, self.head_dim)

  def _network(self, tokens: Array, cond: Array, token_cond: Array, positions: Array, mask: Array | None,
               cache: Cache | None, offset: Array | int, deterministic: bool) -> tuple[Array, Cache | None]:
    """tokens (B, N, C) at sequence positions `positions` (N,) -> velocities (B, N, C) and the cache."""
    cos, sin = (jnp.take(jnp.asarray(a), positions, axis=0) for a in self._tables())
    new_cache = None if cache is None else {"encoder": [], "decoder": []}
    x = self.z_proj(tokens.astype(self.dtype)) + jnp.take(self.encoder_pos_embed[0], positions, axis=0).astype(self.dtype)
    x = self.z_proj_ln(x)
    for i, blk in enumerate(self.encoder_blocks):
      x, layer_cache = blk(x, cond, token_cond, cos, sin, mask, None if cache is None else cache["encoder"][i],
                           offset, deterministic)
      if cache is not None:
        new_cache["encoder"].append(layer_cache)
    x = self.decoder_embed(self.encoder_norm(x))
    x = x + jnp.take(self.decoder_pos_embed[0], positions, axis=0).astype(self.dtype)
    for i, blk in enumerate(self.decoder_blocks):
      x, layer_cache = blk(x, cond, token_cond, cos, sin, mask, None if cache is None else cache["decoder"][i],
                           offset, deterministic)
      if cache is not None:
        new_cache["decoder"].append(layer_cache)
    return self.pred(self.decoder_norm(x)).astype(jnp.float32), new_cache

  def __call__(self, tokens: Array, labels: Array, t: Array, *, train: bool = False) -> Array:
    """Velocities of all entities at once under the block-causal mask (training, parity, no-cache sampling).

    Args:
      tokens: (B, L, C) noisy tokens in entity order.
      labels: (B,) int in [0, num_classes]; num_classes is the null (unconditional) label.
      t: (B, E) flow time of each entity (0 data, 1 noise).
      train: enables dropout (needs a "dropout" rng).

    Returns:
      (B, L, C) float32 velocity predictions.
    """
    ents = self.entities
    _check_tokens(tokens, ents, self.token_dim)
    mask = jnp.asarray(ents.block_causal_mask())[None, None]
    out, _ = self._network(tokens, self.condition(labels, t), jnp.asarray(ents.entity_id),
                           jnp.arange(ents.seq_len), mask, None, 0, not train)
    return out

  def teacher_forced(self, clean: Array, noisy: Array, labels: Array, t: Array, *, train: bool = False) -> Array:
    """Teacher forcing in one pass: entity e sees clean entities < e (at t = 0) and its own noisy tokens.

    The sequence is [clean (L), noisy (L)]: clean tokens attend block-causally to clean tokens; a
    noisy token attends to the clean tokens of earlier entities and the noisy tokens of its own.

    Args:
      clean, noisy: (B, L, C) in entity order; labels (B,); t (B, E) times of the noisy entities.

    Returns:
      (B, L, C) velocities at the noisy tokens.
    """
    ents = self.entities
    eid = ents.entity_id
    num = ents.num_entities
    same = eid[None, :] == eid[:, None]
    before = eid[None, :] < eid[:, None]
    zeros = np.zeros_like(same)
    mask = np.block([[ents.block_causal_mask(), zeros], [before, same]])
    cond = jnp.concatenate([self.condition(labels, t), self.condition(labels, jnp.zeros_like(t))], axis=1)
    token_cond = jnp.asarray(np.concatenate([eid + num, eid]))
    positions = jnp.asarray(np.concatenate([np.arange(ents.seq_len)] * 2))
    out, _ = self._network(jnp.concatenate([clean, noisy], axis=1), cond, token_cond, positions,
                           jnp.asarray(mask)[None, None], None, 0, not train)
    return out[:, ents.seq_len:]

  def init_cache(self, batch: int) -> Cache:
    """Zero KV cache of every layer: {"encoder": [(k, v)] * depth, "decoder": [...]}, each (B, L, H, Dh)."""
    shape = (batch, self.entities.seq_len, self.num_heads, self.head_dim)
    layer = lambda: (jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))
    return {"encoder": [layer() for _ in range(self.encoder_depth)],
            "decoder": [layer() for _ in range(self.decoder_depth)]}

  def entity_step(self, tokens: Array, labels: Array, t: Array, cache: Cache, offset: Array | int
                  ) -> tuple[Array, Cache]:
    """One entity against the KV cache of the entities before it.

    Args:
      tokens: (B, S, C) the entity's tokens (S static), at sequence positions offset .. offset+S-1.
      labels: (B,); t: (B,) the entity's flow time.
      cache: from init_cache / earlier calls, holding the K/V of positions < offset.
      offset: first sequence position of the entity (may be traced).

    Returns:
      velocities (B, S, C) and the cache with this entity's K/V written at [offset, offset + S).
    """
    size = tokens.shape[1]
    positions = offset + jnp.arange(size)
    valid = jnp.arange(self.entities.seq_len)[None, :] < offset + size
    mask = jnp.broadcast_to(valid, (size, self.entities.seq_len))[None, None]
    return self._network(tokens, self.condition(labels, t[:, None]), jnp.zeros((size,), jnp.int32), positions,
                         mask, cache, offset, True)


def _check_tokens(tokens: Array, ents: Entities, token_dim: int) -> None:
  if tokens.ndim != 3 or tokens.shape[1:] != (ents.seq_len, token_dim):
    raise ValueError(f"XAR: tokens must be (B, L, C) = (B, {ents.seq_len}, {token_dim}) for {ents.kind} entities "
                     f"on a {ents.grid}x{ents.grid} grid; got {tokens.shape}")


# ----------------------------------------------------------------------------------------------
# Training objective


def logit_normal(rng: Array, shape: tuple[int, ...]) -> Array:
  """sigmoid(N(0, 1)) samples: the official time distribution."""
  return jax.nn.sigmoid(jax.random.normal(rng, shape))


def flow_targets(x: Array, noise: Array, t_tokens: Array) -> tuple[Array, Array]:
  """Linear interpolant x_t = (1 - t) x + t noise and its velocity noise - x; t_tokens (B, L)."""
  t = t_tokens[..., None]
  return (1 - t) * x + t * noise, noise - x


def xar_loss(model: XAR, params: Any, tokens: Array, labels: Array, rng: Array, *, label_drop: float = 0.1,
             teacher_forcing: bool = False, train: bool = True) -> tuple[Array, dict[str, Array]]:
  """The xAR objective on clean tokens (B, L, C): one velocity MSE over all entities at once.

  Noisy Context Learning (default): an independent logit-normal time per (sample, entity), every
  entity noised at once, each predicted from its own noisy tokens and the noisy earlier entities.
  teacher_forcing=True: the same noisy queries, but the context is the clean earlier entities.
  Labels are replaced by the null label with probability `label_drop` (classifier-free guidance).

  Returns:
    the scalar loss and {"loss_first": MSE of entity 0, "loss_last": of the last entity}.
  """
  ents = model.entities
  drop_rng, t_rng, noise_rng, dropout_rng = jax.random.split(rng, 4)
  b = tokens.shape[0]
  labels = jnp.where(jax.random.uniform(drop_rng, (b,)) < label_drop, model.null_label, labels)
  t = logit_normal(t_rng, (b, ents.num_entities))
  noise = jax.random.normal(noise_rng, tokens.shape, tokens.dtype)
  x_t, target = flow_targets(tokens, noise, t[:, ents.entity_id])
  rngs = {"dropout": dropout_rng}
  if teacher_forcing:
    out = model.apply(params, tokens, x_t, labels, t, train=train, method=XAR.teacher_forced, rngs=rngs)
  else:
    out = model.apply(params, x_t, labels, t, train=train, rngs=rngs)
  err = jnp.mean((out - target) ** 2, axis=-1)  # (B, L)
  first, last = ents.entity_id == 0, ents.entity_id == ents.num_entities - 1
  return jnp.mean(err), {"loss_first": jnp.mean(err[:, first]), "loss_last": jnp.mean(err[:, last])}


# ----------------------------------------------------------------------------------------------
# Sampling


def cfg_scales(cfg: float, num_entities: int, schedule: str = "linear") -> np.ndarray:
  """(E,) guidance weight per entity: "linear" is the official ramp 1 + (cfg - 1) e / (E - 1) (so entity
  0 is unguided; a single entity gets cfg), "constant" is cfg everywhere."""
  if schedule == "constant" or num_entities == 1:
    return np.full(num_entities, cfg, np.float32)
  if schedule == "linear":
    return (1 + (cfg - 1) * np.arange(num_entities) / (num_entities - 1)).astype(np.float32)
  raise ValueError(f"cfg_schedule: unknown {schedule!r}; expected 'linear' or 'constant'")


def time_grid(num_steps: int, method: str) -> np.ndarray:
  """The official time grids (float64 then float32): Euler linspace(1, 0, S + 1); EM linspace(1, 0.04, S) ++ [0]."""
  if method == "euler":
    return np.linspace(1.0, 0.0, num_steps + 1).astype(np.float32)
  if method == "em":
    return np.concatenate([np.linspace(1.0, 0.04, num_steps), [0.0]]).astype(np.float32)
  raise ValueError(f"sampler method: unknown {method!r}; expected 'euler' or 'em'")


NoiseFn = Callable[[Array, Array], Array]  # (entity, draw) -> (B, S, C); draw 0 is the start noise


def _guided(d: Array, w: Array, guided: bool) -> Array:
  if not guided:
    return d
  cond, uncond = jnp.split(d, 2)
  return jnp.where(w > 1, uncond + w * (cond - uncond), cond)


def _solve_entity(velocity: Callable[[Array, Array], Array], z: Array, noise_fn: NoiseFn, entity: Array,
                  w: Array, *, num_steps: int, method: str, guided: bool) -> Array:
  """Integrates one entity from noise z (B, S, C) at t = 1 to t = 0 (official Euler / Euler-Maruyama)."""
  grid = jnp.asarray(time_grid(num_steps, method))
  double = (lambda a: jnp.concatenate([a, a])) if guided else (lambda a: a)

  def drift(x, t):
    v = velocity(double(x), jnp.full((x.shape[0] * (2 if guided else 1),), t))
    if method == "em":
      xx = double(x)
      score = (-(1 - t) * v - xx) / t  # linear path: alpha/d_alpha = -(1 - t), var = t
      v = v - t * score  # - 0.5 * diffusion(2t) * score
    return _guided(v, w, guided)

  if method == "euler":
    def body(i, x):
      t, t_next = grid[i], grid[i + 1]
      return x + (t_next - t) * drift(x, t)
    return jax.lax.fori_loop(0, num_steps, body, z)

  def em_body(i, x):
    t, t_next = grid[i], grid[i + 1]
    dt = t_next - t
    eps = noise_fn(entity, i + 1)
    return x + drift(x, t) * dt + jnp.sqrt(2 * t) * eps * jnp.sqrt(jnp.abs(dt))
  x = jax.lax.fori_loop(0, num_steps - 1, em_body, z)
  t, t_next = grid[num_steps - 1], grid[num_steps]
  return x + (t_next - t) * drift(x, t)


def sample(model: XAR, params: Any, labels: Array, rng: Array | None = None, *, num_steps: int = 25,
           cfg: float = 1.0, cfg_schedule: str = "linear", method: str = "euler", use_cache: bool = True,
           noise_fn: NoiseFn | None = None) -> Array:
  """Generates tokens entity by entity (jit this, with the keyword arguments static).

  Each entity starts from Gaussian noise and is integrated from t = 1 to 0 (Euler ODE, or the
  official Euler-Maruyama SDE with diffusion 2t and a final mean step), attending to the clean
  earlier entities at t = 0. With use_cache, their keys and values come from a KV cache filled by
  one clean pass per finished entity; without, every step recomputes the whole prefix (same
  numbers, more work). Guidance: the batch is doubled with the null label when cfg != 1.

  Args:
    model, params: the XAR and its variables.
    labels: (B,) int class labels (num_classes for unconditional).
    rng: key for the noise (ignored when noise_fn is given).
    num_steps: flow steps per entity.
    cfg, cfg_schedule: guidance weight and its per-entity schedule (see cfg_scales).
    method: "euler" or "em".
    noise_fn: (entity, draw) -> (B, S, C) noise, draw 0 the start, 1.. the EM increments; for parity.

  Returns:
    (B, L, C) float32 tokens in entity order.
  """
  ents = model.entities
  b, c = labels.shape[0], model.token_dim
  sizes, offsets = ents.sizes, ents.offsets
  guided = cfg != 1.0
  weights = jnp.asarray(cfg_scales(cfg, ents.num_entities, cfg_schedule))
  labels2 = jnp.concatenate([labels, jnp.full_like(labels, model.null_label)]) if guided else labels
  if noise_fn is None:
    key = jax.random.key(0) if rng is None else rng
    noise_fn_for = lambda size: (lambda e, i: jax.random.normal(
        jax.random.fold_in(jax.random.fold_in(key, e), i), (b, size, c)))
  else:
    noise_fn_for = lambda size: noise_fn

  def entity_sample(seq, cache, e, offset, size):
    nf = noise_fn_for(size)
    if use_cache:
      velocity = lambda x, t: model.apply(params, x, labels2, t, cache, offset, method=XAR.entity_step)[0]
    else:
      def velocity(x, t):
        full = jnp.concatenate([seq, seq]) if guided else seq
        full = jax.lax.dynamic_update_slice(full, x, (0, offset, 0))
        times = jnp.where(jnp.arange(ents.num_entities) == e, t[:, None], 0.0)
        out = model.apply(params, full, labels2, times)
        return jax.lax.dynamic_slice_in_dim(out, offset, size, axis=1)
    z = _solve_entity(velocity, nf(e, 0), nf, e, weights[e], num_steps=num_steps, method=method, guided=guided)
    seq = jax.lax.dynamic_update_slice(seq, z, (0, offset, 0))
    if use_cache:  # the clean entity's keys and values, at t = 0, for the entities after it
      zz = jnp.concatenate([z, z]) if guided else z
      _, cache = model.apply(params, zz, labels2, jnp.zeros((zz.shape[0],)), cache, offset, method=XAR.entity_step)
    return seq, cache

  seq = jnp.zeros((b, ents.seq_len, c), jnp.float32)
  cache = model.init_cache(labels2.shape[0]) if use_cache else None
  uniform = ents.uniform_size
  if uniform is not None and ents.num_entities > 1:
    def body(e, carry):
      return entity_sample(*carry, e, e * uniform, uniform)
    seq, cache = jax.lax.fori_loop(0, ents.num_entities, body, (seq, cache))
  else:
    for e in range(ents.num_entities):
      seq, cache = entity_sample(seq, cache, jnp.asarray(e), int(offsets[e]), int(sizes[e]))
  return seq
