"""T2T-ViT (Yuan et al., 2021): a tokens-to-token stem and a deep-narrow ViT backbone.

Numerically equal to the official yitu-opensource/T2T-ViT models (models/t2t_vit.py,
token_transformer.py, token_performer.py). The stem alternates soft splits (torch's nn.Unfold:
overlapping patches, channel-major features) with one T2T layer each:

  image (B, H, W, 3) -> unfold 7x7/4 pad 2 -> T2T layer -> reshape to (B, H/4, W/4, 64)
    -> unfold 3x3/2 pad 1 -> T2T layer -> reshape -> unfold 3x3/2 pad 1 -> project -> (B, HW/256, C)

A T2T layer changes the width (C_in -> 64), so its attention residual is the value (`v + attn`)
rather than the input. Two kinds: "transformer" (softmax attention, one head, scale C_in ** -0.5
of the *input* width, not the head width) and "performer" (the official linear attention with
exp(w.x - |x|^2 / 2) / sqrt(m) positive random features; w is a fixed (m, 64) parameter that
gets no gradient and no weight decay). The backbone is tokax's ViT Block (so every reduction in
tokax.reduction plugs in through `reduction=` as in tokax.models.vit) with a class token, a fixed
sinusoidal position table, no qkv bias and torch's LayerNorm epsilon 1e-5.

Attention scale of the backbone: head_dim ** -0.5 here, as the official code builds models with
pretrained=False. The official factories pass qk_scale = width ** -0.5 when pretrained=True, so
the released checkpoints were trained with that scale; tokax.interop.t2t folds it into the query
weights when it converts them, which leaves logits, attention maps and ToMe's keys unchanged.

Initialisation is the official _init_weights: normal(0.02) kernels (timm's trunc_normal_(std=.02)
cuts at +-2 absolute, 100 std) and zero biases on every Dense, head included; LayerNorms 1 / 0;
cls_token truncated normal(0.02). (Flax's lecun default leaves the Performer's q, k unit-variance,
its features ~e^-30 and its attention dead: issue 4.)

Parameter names follow the official state dict (tokens_to_token/attention1/..., blocks_i,
norm, head), so conversion is a transpose per tensor (tokax.interop.t2t). Images are NHWC.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokax import kernels
from tokax.models.vit import Block, check_encoder_inputs, kernel_interpret
from tokax.reduction.tokens import Tokens

Array = jax.Array
Dtype = Any

TOKENS_TYPES = ("performer", "transformer")
NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which every official LayerNorm uses
# The official T2T_ViT._init_weights: every nn.Linear (stem, backbone, head) gets timm's
# trunc_normal_(std=.02), whose cut is at +-2 in absolute units (100 std): a plain normal(0.02).
# Flax's default (lecun normal, std fan_in ** -0.5) makes the Performer's q, k unit-variance, so
# exp(w.u - |u|^2 / 2) underflows (|u|^2 / 2 ~ 32) and its attention is dead from the start.
DENSE_INIT = nn.initializers.normal(0.02)
Dense = functools.partial(nn.Dense, kernel_init=DENSE_INIT)  # every Dense of the model
STEM_STRIDE = 16  # 4 * 2 * 2: the three soft splits


@dataclasses.dataclass(frozen=True)
class T2TArch:
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float
  tokens_type: str


# The official factories: t2t_vit_<depth> use the performer stem, t2t_vit_t_<depth> the transformer one.
PRESETS: dict[str, T2TArch] = {
    "7": T2TArch(256, 7, 4, 2.0, "performer"),
    "10": T2TArch(256, 10, 4, 2.0, "performer"),
    "12": T2TArch(256, 12, 4, 2.0, "performer"),
    "14": T2TArch(384, 14, 6, 3.0, "performer"),
    "19": T2TArch(448, 19, 7, 3.0, "performer"),
    "24": T2TArch(512, 24, 8, 3.0, "performer"),
    "t_14": T2TArch(384, 14, 6, 3.0, "transformer"),
    "t_19": T2TArch(448, 19, 7, 3.0, "transformer"),
    "t_24": T2TArch(512, 24, 8, 3.0, "transformer"),
}
_VARIANT = re.compile(r"^(?:t2t[-_]vit[-_])?(?P<t>t[-_])?(?P<depth>\d+)$", re.IGNORECASE)


def parse_variant(variant: str) -> T2TArch:
  """"7", "T2T-ViT-14", "t2t_vit_t_14" (official names) -> the preset's T2TArch."""
  m = _VARIANT.match(variant) if isinstance(variant, str) else None
  key = None if m is None else ("t_" if m["t"] else "") + m["depth"]
  if key not in PRESETS:
    raise ValueError(f"T2TViT.variant: unknown variant {variant!r}; expected one of {sorted(PRESETS)} "
                     "(optionally as 'T2T-ViT-14' or the official 't2t_vit_t_14')")
  return PRESETS[key]


def sinusoid_table(num_positions: int, width: int) -> np.ndarray:
  """The official fixed position table (transformer_block.get_sinusoid_encoding): (1, P, C) float32."""
  position = np.arange(num_positions, dtype=np.float64)[:, None]
  rate = np.power(10000.0, 2 * (np.arange(width) // 2) / width)
  angles = position / rate
  angles[:, 0::2] = np.sin(angles[:, 0::2])
  angles[:, 1::2] = np.cos(angles[:, 1::2])
  return angles.astype(np.float32)[None]


def soft_split(x: Array, kernel: int, stride: int, padding: int) -> Array:
  """torch.nn.Unfold on NHWC, tokens first: (B, H, W, C) -> (B, H' * W', C * kernel * kernel).

  Features are channel-major (c, i, j) as Unfold's; tokens are row-major over the output grid.
  conv_general_dilated_patches at HIGHEST precision multiplies by one-hot filters, so it is an
  exact copy (and compiles far faster than kernel**2 strided slices).
  """
  patches = jax.lax.conv_general_dilated_patches(
      x, (kernel, kernel), (stride, stride), [(padding, padding), (padding, padding)],
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
  return patches.reshape(patches.shape[0], -1, patches.shape[-1])


def _tokens_to_grid(x: Array) -> Array:
  """(B, N, C) with N a square -> (B, sqrt N, sqrt N, C)."""
  side = math.isqrt(x.shape[1])
  return x.reshape(x.shape[0], side, side, x.shape[2])


class Mlp(nn.Module):
  """Linear, exact GELU, Linear (the official Mlp, as named in the token transformer)."""
  hidden: int
  out: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.gelu(dense(self.hidden, name="fc1")(x), approximate=False)
    return dense(self.out, name="fc2")(x)


class TokenTransformer(nn.Module):
  """T2T layer with one-head softmax attention: (B, N, C_in) -> (B, N, dim).

  x = v + proj(softmax(q k^T * C_in ** -0.5) v) with q, k, v = split(qkv(norm1(x))) (no bias),
  then x + mlp(norm2(x)) with a dim -> dim MLP (mlp_ratio 1).
  """
  dim: int
  attention: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  interpret: bool = False

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    b, n, c_in = x.shape
    norm = lambda name: nn.LayerNorm(epsilon=NORM_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    h = norm("norm1")(x)
    qkv = Dense(3 * self.dim, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                name="attn_qkv")(h).reshape(b, n, 3, 1, self.dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    # The official scale is C_in ** -0.5; kernels.attention applies dim ** -0.5, so q carries the ratio.
    q = q * jnp.asarray(math.sqrt(self.dim / c_in), q.dtype)
    out, _ = kernels.attention(q, k, v, implementation=self.attention, interpret=kernel_interpret(self.interpret))
    out = Dense(self.dim, dtype=self.dtype, param_dtype=self.param_dtype, name="attn_proj")(out.reshape(b, n, self.dim))
    x = v.reshape(b, n, self.dim) + out
    return x + Mlp(self.dim, self.dim, self.dtype, self.param_dtype, name="mlp")(norm("norm2")(x))


def _orthogonal_features(key: Array, shape: tuple[int, int], dtype: Dtype = jnp.float32) -> Array:
  """(m, d) with orthonormal rows (m <= d) times sqrt(m): the official nn.init.orthogonal_ * sqrt(m)."""
  m, d = shape
  q, r = jnp.linalg.qr(jax.random.normal(key, (d, m), jnp.float32))
  q = q * jnp.sign(jnp.diagonal(r))[None]
  return (q.T * math.sqrt(m)).astype(dtype)


class TokenPerformer(nn.Module):
  """T2T layer with the official one-head Performer attention: (B, N, C_in) -> (B, N, dim).

  k, q, v = split(kqv(norm1(x))) (in that order); phi(u) = exp(w u - |u|^2 / 2) / sqrt(m) with w
  (m, dim) fixed; y = phi(q) (phi(k)^T v) / (phi(q) . sum_t phi(k_t) + 1e-8); x = v + drop(proj(y));
  then x + drop(mlp(norm2(x))). The features run in float32 as the official `.float()` calls.
  """
  dim: int
  kernel_ratio: float = 0.5
  dropout: float = 0.1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    norm = lambda name: nn.LayerNorm(epsilon=NORM_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    m = int(self.dim * self.kernel_ratio)
    w = jax.lax.stop_gradient(self.param("w", _orthogonal_features, (m, self.dim), jnp.float32))
    dense = functools.partial(Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    kqv = dense(3 * self.dim, name="kqv")(norm("norm1")(x))
    k, q, v = jnp.split(kqv, 3, axis=-1)

    def features(u: Array) -> Array:  # (B, T, dim) -> (B, T, m)
      u = u.astype(jnp.float32)
      half_sq = 0.5 * jnp.sum(u * u, axis=-1, keepdims=True)
      return jnp.exp(jnp.einsum("bti,mi->btm", u, w) - half_sq) / math.sqrt(m)

    kp, qp = features(k), features(q)
    denom = jnp.einsum("bti,bi->bt", qp, kp.sum(axis=1))[..., None]  # (B, T, 1)
    kptv = jnp.einsum("bin,bim->bnm", v.astype(jnp.float32), kp)  # (B, dim, m)
    y = (jnp.einsum("bti,bni->btn", qp, kptv) / (denom + 1e-8)).astype(x.dtype)
    drop = lambda name: nn.Dropout(self.dropout, name=name)
    y = dense(self.dim, name="proj")(y)
    x = v + drop("dp")(y, deterministic=deterministic)
    h = dense(self.dim, name="mlp_0")(norm("norm2")(x))
    h = dense(self.dim, name="mlp_2")(nn.gelu(h, approximate=False))
    return x + drop("mlp_dropout")(h, deterministic=deterministic)


class T2TModule(nn.Module):
  """The tokens-to-token stem: (B, H, W, 3) -> (B, H * W / 256, width).

  Sows each stage's output into the "intermediates" collection as <stage>_out (soft_split0,
  attention1, soft_split1, attention2, soft_split2, project).
  """
  width: int
  tokens_type: str = "performer"
  token_dim: int = 64
  attention: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  interpret: bool = False

  @nn.compact
  def __call__(self, images: Array, deterministic: bool = True) -> Array:
    if self.tokens_type == "transformer":
      layer = lambda name: TokenTransformer(self.token_dim, self.attention, self.dtype, self.param_dtype,
                                            self.interpret, name=name)
    else:
      layer = lambda name: TokenPerformer(self.token_dim, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    x = soft_split(images, 7, 4, 2)
    self.sow("intermediates", "soft_split0_out", x)
    x = layer("attention1")(x, deterministic)
    self.sow("intermediates", "attention1_out", x)
    x = soft_split(_tokens_to_grid(x), 3, 2, 1)
    self.sow("intermediates", "soft_split1_out", x)
    x = layer("attention2")(x, deterministic)
    self.sow("intermediates", "attention2_out", x)
    x = soft_split(_tokens_to_grid(x), 3, 2, 1)
    self.sow("intermediates", "soft_split2_out", x)
    x = Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype, name="project")(x)
    self.sow("intermediates", "project_out", x)
    return x


class T2TViT(nn.Module):
  """T2T-ViT classifier whose backbone blocks can merge, prune or slim tokens.

  Attributes:
    variant: a preset: "7", "10", "12", "14", "19", "24" (performer stem) or "t_14", "t_19",
      "t_24" (transformer stem); "T2T-ViT-7" and the official "t2t_vit_t_14" spellings work too.
    tokens_type: "performer" or "transformer" to override the preset's stem; None keeps it.
    width, depth, num_heads, mlp_ratio: override the preset's backbone (e.g. a 1-block model for
      CPU runs); None keeps the preset's.
    num_classes: classifier outputs; 0 returns the normed class token.
    image_size: input height = width, a multiple of 16.
    token_dim: width of the T2T layers (64 in every official model).
    drop_path: stochastic depth at the last block (linear in depth from 0, as the official code).
    stem_dropout: the performer's two dropouts (0.1, hard-coded in the official Token_performer).
    dtype, param_dtype: computation and parameter dtypes.
    attention: kernels.attention implementation ("xla", "cudnn", "pallas", None/"auto"), in the
      transformer stem and the blocks.
    interpret: run the "pallas" kernel in Pallas' interpreter (how a CPU runs the TPU kernel; tests).
    reduction: a tokax.reduction method (ToMe, MCTF, EViT, ...) or None for the dense model.
  """
  variant: str = "14"
  tokens_type: str | None = None
  width: int | None = None
  depth: int | None = None
  num_heads: int | None = None
  mlp_ratio: float | None = None
  num_classes: int = 1000
  image_size: int = 224
  token_dim: int = 64
  drop_path: float = 0.0
  stem_dropout: float = 0.1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str | None = None
  reduction: Any = None
  interpret: bool = False

  @property
  def arch(self) -> T2TArch:
    arch = parse_variant(self.variant)
    if self.tokens_type is not None:
      if self.tokens_type not in TOKENS_TYPES:
        raise ValueError(f"T2TViT.tokens_type: expected one of {TOKENS_TYPES} or None; got {self.tokens_type!r}")
      arch = dataclasses.replace(arch, tokens_type=self.tokens_type)
    overrides = {}
    for name in ("width", "depth", "num_heads", "mlp_ratio"):
      value = getattr(self, name)
      if value is None:
        continue
      if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
          name != "mlp_ratio" and not isinstance(value, int)):
        raise ValueError(f"T2TViT.{name}: expected a positive {'number' if name == 'mlp_ratio' else 'int'} "
                         f"or None; got {value!r}")
      overrides[name] = value
    arch = dataclasses.replace(arch, **overrides)
    if arch.width % arch.num_heads:
      raise ValueError(f"T2TViT: width {arch.width} is not divisible by num_heads {arch.num_heads}")
    return arch

  @property
  def num_patches(self) -> int:
    return (self.image_size // STEM_STRIDE) ** 2

  def _check(self, images: Array) -> None:
    self.arch  # validates variant and tokens_type
    if self.image_size < STEM_STRIDE or self.image_size % STEM_STRIDE:
      raise ValueError(f"T2TViT.image_size: expected a positive multiple of {STEM_STRIDE} (the stem's three "
                       f"soft splits have strides 4, 2, 2); got {self.image_size}")
    check_encoder_inputs("T2TViT", images, image_size=self.image_size, reduction=self.reduction,
                         attention=self.attention, interpret=self.interpret)

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False, return_intermediates: bool = False):
    """images: (B, H, W, 3) float -> logits (B, num_classes).

    With return_intermediates, returns (logits, dict) with the keys of tokax.models.vit.ViT:
    "num_tokens" (L,), "size" (B, N_L), "assign" (B, N0), "mask", "features" (B, N_L, C).
    Apply with mutable=["intermediates"] to also get every stem stage's output
    (tokens_to_token/<stage>_out) and every block's (blocks_<i>_out).
    """
    self._check(images)
    arch = self.arch
    x = T2TModule(arch.width, arch.tokens_type, self.token_dim, self.attention, self.dtype, self.param_dtype,
                  self.interpret,
                  name="tokens_to_token")(images.astype(self.dtype), deterministic=not train)
    batch = x.shape[0]
    cls = self.param("cls_token", nn.initializers.truncated_normal(0.02), (1, 1, arch.width), self.param_dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, arch.width)).astype(x.dtype), x], axis=1)
    x = x + jnp.asarray(sinusoid_table(self.num_patches + 1, arch.width), x.dtype)
    tokens = Tokens.create(x, has_cls=True)

    counts = []
    merged = False
    mlp_dim = int(arch.width * arch.mlp_ratio)
    for i in range(arch.depth):
      prop = bool(merged and self.reduction is not None and getattr(self.reduction, "prop_attn", False))
      n_before = tokens.num_tokens
      tokens = Block(
          num_heads=arch.num_heads, mlp_dim=mlp_dim, layer=i, depth=arch.depth, reduction=self.reduction,
          prop_attn_active=prop, qkv_bias=False, drop_path=self.drop_path * i / max(arch.depth - 1, 1),
          attention=self.attention, norm_epsilon=NORM_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype,
          kernel_init=DENSE_INIT, interpret=self.interpret, name=f"blocks_{i}")(tokens, deterministic=not train)
      self.sow("intermediates", f"blocks_{i}_out", tokens.x)
      merged = merged or tokens.num_tokens != n_before or tokens.mask is not None
      counts.append(tokens.num_tokens)

    x = nn.LayerNorm(epsilon=NORM_EPSILON, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(tokens.x)
    pooled = x[:, 0]
    if self.num_classes:
      logits = Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(pooled)
    else:
      logits = pooled
    if not return_intermediates:
      return logits
    return logits, {
        "num_tokens": jnp.asarray(counts, jnp.int32),
        "size": tokens.size,
        "assign": tokens.assign,
        "mask": tokens.mask,
        "features": x,
    }
