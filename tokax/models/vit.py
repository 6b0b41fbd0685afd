"""ViT / DeiT with a token-reduction hook in every block, numerically equal to timm.

Parameter names follow timm's (patch_embed, cls_token, pos_embed, blocks_i/{norm1, attn/{qkv,
proj}, ls1, norm2, mlp/{fc1, fc2}, ls2}, norm, fc_norm, head, head_dist), so conversion is a
transpose per tensor (tokax.interop.timm). Images are NHWC.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokax import kernels
from tokax.models.partitioning import constrain_batch
from tokax.reduction.base import check_block_reduction, layer_scores
from tokax.reduction.tokens import Tokens

Array = jax.Array
Dtype = Any
Initializer = Any  # jax.nn.initializers.Initializer: (key, shape, dtype) -> Array

# name -> (width, depth, heads, mlp_dim); the patch size comes from the "/p" suffix.
_WIDTHS = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "M": (512, 12, 8, 2048),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
    "g": (1408, 40, 16, 6144),
}
_VARIANT = re.compile(r"^(?P<name>[A-Za-z]+)/(?P<patch>\d+)$")


@dataclasses.dataclass(frozen=True)
class Arch:
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int


def parse_variant(variant: str) -> Arch:
  """"S/16" -> Arch(width=384, depth=12, num_heads=6, mlp_dim=1536, patch_size=16)."""
  m = _VARIANT.match(variant) if isinstance(variant, str) else None
  if m is None or m["name"] not in _WIDTHS:
    raise ValueError(f"ViT.variant: unknown variant {variant!r}; expected '<size>/<patch>' with size in "
                     f"{sorted(_WIDTHS)} (e.g. 'S/16', 'B/32', 'H/14')")
  return Arch(*_WIDTHS[m["name"]], patch_size=int(m["patch"]))


class DropPath(nn.Module):
  """Stochastic depth per sample (timm DropPath)."""
  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0).astype(x.dtype)


class LayerScale(nn.Module):
  init_value: float
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],), self.param_dtype)
    return x * gamma.astype(x.dtype)


class Attention(nn.Module):
  """Multi-head self-attention through tokax.kernels.attention; also returns the reduction metrics.

  Besides the usual call, `probabilities` and `attend` split attention in two, for methods that
  reduce tokens with the block's own attention map before using it (MCTF's one-step-ahead).
  """
  width: int
  num_heads: int
  qkv_bias: bool = True
  implementation: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.linear.default_kernel_init
  interpret: bool = False

  def setup(self):
    dense = lambda feats, use_bias: nn.Dense(feats, use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                                             kernel_init=self.kernel_init)
    self.qkv = dense(3 * self.width, self.qkv_bias)
    self.proj = dense(self.width, True)

  def _qkv(self, x: Array) -> Array:
    """(B, N, C) -> (B, N, 3, H, Dh)."""
    return self.qkv(x).reshape(x.shape[0], x.shape[1], 3, self.num_heads, self.width // self.num_heads)

  def __call__(self, x: Array, key_bias: Array | None, key_mask: Array | None,
               scores: tuple[str, ...]) -> tuple[Array, dict[str, Array]]:
    """x: (B, N, C) -> (B, N, C) and metrics {"keys": (B, N, Dh), score: (B, N)}."""
    qkv = self._qkv(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out, metrics = kernels.attention(
        q, k, v, key_bias=key_bias, key_mask=key_mask, scores=scores, implementation=self.implementation,
        interpret=kernel_interpret(self.interpret))
    metrics = dict(metrics, keys=k.mean(axis=2))
    return self.proj(out.reshape(x.shape)), metrics

  def probabilities(self, x: Array, key_bias: Array | None, key_mask: Array | None) -> Array:
    """x: (B, N, C) -> softmax attention probabilities (B, H, N, N), float32."""
    qkv = self._qkv(x)
    logits = kernels.reference.attention_logits(qkv[:, :, 0], qkv[:, :, 1], key_bias, key_mask)
    return jax.nn.softmax(logits, axis=-1)

  def attend(self, x: Array, probs: Array) -> Array:
    """Attention output with given probabilities: x (B, N, C), probs (B, H, N, N) -> (B, N, C)."""
    v = self._qkv(x)[:, :, 2]
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return self.proj(out.astype(x.dtype).reshape(x.shape))


def kernel_interpret(interpret: bool) -> bool | None:
  """A model's `interpret` field as kernels.attention's argument: True (Pallas' interpreter) or None."""
  return True if interpret else None


def check_encoder_inputs(owner: str, images: Array, *, image_size: int, reduction: Any, attention: str | None,
                         interpret: bool = False) -> None:
  """The checks every ViT-family encoder makes: a block reduction, a known attention, (B, S, S, 3) float images."""
  check_block_reduction(reduction, owner)
  if attention not in (None, *kernels.IMPLEMENTATIONS):
    raise ValueError(f"{owner}.attention: expected one of {kernels.IMPLEMENTATIONS} or None; got {attention!r}")
  if not isinstance(interpret, bool):
    raise ValueError(f"{owner}.interpret: expected a bool; got {interpret!r}")
  backend = jax.default_backend()
  if attention == "pallas" and not interpret and backend not in ("tpu", "gpu"):
    raise ValueError(
        f"{owner}.attention='pallas': no compiled Pallas kernel on {backend!r}; set {owner}.interpret=True "
        "(config.model.interpret) to run the TPU kernel in Pallas' interpreter (slow: for checks), or use 'auto' or "
        "'xla'")
  want = (image_size, image_size, 3)
  if images.ndim != 4 or tuple(images.shape[1:]) != want:
    raise ValueError(f"{owner}: images must be NHWC of shape (B, {want[0]}, {want[1]}, 3); got {tuple(images.shape)}")
  if images.shape[0] == 0:
    raise ValueError(f"{owner}: the batch is empty: images of shape {tuple(images.shape)} have batch dimension B=0; "
                     "give at least one image (drop empty batches before the model)")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"{owner}: images must be floating point (normalised); got dtype {images.dtype}")


class Block(nn.Module):
  """Pre-norm transformer block with a reduction hook.

  Where the reduction runs is its `placement`: "mid" (after the attention residual, before the
  MLP: ToMe, EViT, PiToMe, DToMe), "pre" (at the block input, with this block's own attention map,
  which is merged and reused: MCTF) or "end" (after the MLP residual, through a module that may
  hold parameters: SiT's token slimming). See tokax.reduction.base.
  norm_epsilon is the LayerNorms' epsilon: 1e-6 as timm's ViT, 1e-5 (torch's default) for T2T-ViT.
  kernel_init initialises the four Dense kernels (flax's lecun normal for ViT; T2T-ViT passes its
  official normal(0.02)); biases start at zero.
  """
  num_heads: int
  mlp_dim: int
  layer: int
  depth: int
  reduction: Any = None
  prop_attn_active: bool = False
  qkv_bias: bool = True
  layer_scale: float | None = None
  drop_path: float = 0.0
  attention: str | None = None
  gelu_approximate: bool = False
  norm_epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.linear.default_kernel_init
  interpret: bool = False

  @nn.compact
  def __call__(self, tokens: Tokens, deterministic: bool = True) -> Tokens:
    width = tokens.x.shape[-1]
    norm = lambda name: nn.LayerNorm(epsilon=self.norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    scale = lambda name: (LayerScale(self.layer_scale, self.param_dtype, name=name)
                          if self.layer_scale is not None else (lambda y: y))
    reduction = self.reduction
    placement = None if reduction is None else reduction.placement
    key_bias = None
    if self.prop_attn_active:  # masked slots (size 0) get bias 0; the key mask already excludes them
      key_bias = jnp.log(tokens.size if tokens.mask is None else jnp.where(tokens.mask, tokens.size, 1.0))
    norm1 = norm("norm1")
    attn = Attention(width, self.num_heads, self.qkv_bias, self.attention, self.dtype, self.param_dtype,
                     self.kernel_init, self.interpret, name="attn")
    if placement == "pre" and reduction.attention_layer(layer=self.layer, depth=self.depth):
      probs = attn.probabilities(norm1(tokens.x), key_bias, tokens.mask)
      tokens, probs = reduction.reduce_with_attention(tokens, probs, layer=self.layer, depth=self.depth)
      y = attn.attend(norm1(tokens.x), probs)
    else:
      scores = layer_scores(reduction, layer=self.layer, depth=self.depth) if placement == "mid" else ()
      y, metrics = attn(norm1(tokens.x), key_bias, tokens.mask, scores)
    tokens = tokens.replace(x=tokens.x + DropPath(self.drop_path)(scale("ls1")(y), deterministic))
    if placement == "mid":
      tokens = reduction.reduce(tokens, metrics, layer=self.layer, depth=self.depth)
    x = tokens.x
    h = norm("norm2")(x)
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                 name="mlp_fc1")(h)
    h = nn.gelu(h, approximate=self.gelu_approximate)
    h = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                 name="mlp_fc2")(h)
    tokens = tokens.replace(x=x + DropPath(self.drop_path)(scale("ls2")(h), deterministic))
    if placement == "end":
      module = reduction.module(layer=self.layer, depth=self.depth)
      if module is not None:
        tokens = module(tokens, deterministic=deterministic)
    return tokens


class ViT(nn.Module):
  """Vision Transformer (ViT / DeiT) whose blocks can merge, prune or slim tokens.

  Attributes:
    variant: "Ti/16", "S/16", "B/16", "L/16", "H/14", "B/32", "S/8", ... (size/patch).
    width, depth, num_heads, mlp_dim: override the variant's (as big_vision's ViT), e.g. a 6-block
      Ti/8 for CPU-sized runs; None keeps the variant's.
    num_classes: classifier outputs; 0 returns the pooled features.
    image_size: input height = width.
    pool: "cls" (class token) or "gap" (size-weighted mean of the patch tokens, then fc_norm).
    class_token: whether to prepend a class token (required for pool="cls").
    distilled: DeiT distillation token with its own head; at eval the logits are the mean of both
      heads (timm), in training (`distill_logits=True`) both are returned.
    qkv_bias: bias on the qkv projection.
    layer_scale: LayerScale init value (e.g. 1e-6 for DeiT-III), or None.
    drop_path: stochastic depth rate at the last block (linear in depth, as timm).
    dtype: computation dtype; param_dtype: parameter dtype.
    attention: kernels.attention implementation: "xla", "cudnn", "pallas" (the fused attention-and-
      select kernel: Mosaic TPU / Mosaic GPU), or None/"auto" (kernels.attention.auto_implementation).
    interpret: run the "pallas" kernel in Pallas' interpreter (how a CPU runs the TPU kernel: slow,
      for tests and checks; kernels.attention's interpret=True).
    gelu_approximate: tanh GELU (big_vision's default, lets XLA fuse it into the matmul) instead
      of timm's exact erf GELU.
    reduction: a block reduction method (tokax.reduction.build("tome:16") or ToMe(r=16)), or None
      for the dense model.
  """
  variant: str = "S/16"
  width: int | None = None
  depth: int | None = None
  num_heads: int | None = None
  mlp_dim: int | None = None
  num_classes: int = 1000
  image_size: int = 224
  pool: str = "cls"
  class_token: bool = True
  distilled: bool = False
  qkv_bias: bool = True
  layer_scale: float | None = None
  drop_path: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention: str | None = None
  gelu_approximate: bool = False
  reduction: Any = None
  interpret: bool = False

  @property
  def arch(self) -> Arch:
    arch = parse_variant(self.variant)
    overrides = {}
    for name in ("width", "depth", "num_heads", "mlp_dim"):
      value = getattr(self, name)
      if value is None:
        continue
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"ViT.{name}: expected a positive int or None; got {value!r}")
      overrides[name] = value
    arch = dataclasses.replace(arch, **overrides)
    if arch.width % arch.num_heads:
      raise ValueError(f"ViT: width {arch.width} is not divisible by num_heads {arch.num_heads}")
    return arch

  def _check(self, images: Array) -> None:
    arch = self.arch
    if self.pool not in ("cls", "gap"):
      raise ValueError(f"ViT.pool: expected 'cls' or 'gap'; got {self.pool!r}")
    if self.distilled and self.pool != "cls":
      raise ValueError("ViT.distilled=True reads the class and distillation tokens: it needs pool='cls'")
    if self.pool == "cls" and not self.class_token:
      raise ValueError("ViT.pool='cls' needs class_token=True; use pool='gap' for a model without one")
    if self.image_size % arch.patch_size:
      raise ValueError(f"ViT.image_size={self.image_size} is not a multiple of the patch size {arch.patch_size}")
    check_encoder_inputs("ViT", images, image_size=self.image_size, reduction=self.reduction,
                         attention=self.attention, interpret=self.interpret)

  @nn.compact
  def __call__(self, images: Array, *, train: bool = False, return_intermediates: bool = False,
               distill_logits: bool = False):
    """images: (B, H, W, 3) float -> logits (B, num_classes).

    With return_intermediates, returns (logits, dict): "num_tokens" (L,) token count after each
    block, "size" (B, N_L) token sizes, "assign" (B, N0) the token each original token lives in,
    "mask" (B, N_L) or None, "features" (B, N_L, C) the final normed tokens.
    With distill_logits (distilled models), logits is the pair (cls head, dist head).
    """
    self._check(images)
    arch = self.arch
    p = arch.patch_size
    x = nn.Conv(arch.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, name="patch_embed")(images.astype(self.dtype))
    batch = x.shape[0]
    x = x.reshape(batch, -1, arch.width)
    prefix = []
    init = nn.initializers.normal(0.02)
    if self.class_token:
      prefix.append(self.param("cls_token", nn.initializers.zeros, (1, 1, arch.width), self.param_dtype))
    if self.distilled:
      prefix.append(self.param("dist_token", init, (1, 1, arch.width), self.param_dtype))
    if prefix:
      x = jnp.concatenate([jnp.broadcast_to(t, (batch, 1, arch.width)).astype(x.dtype) for t in prefix] + [x], axis=1)
    pos = self.param("pos_embed", init, (1, x.shape[1], arch.width), self.param_dtype)
    x = constrain_batch(x + pos.astype(x.dtype))
    tokens = Tokens.create(x, has_cls=self.class_token, has_dist=self.distilled)

    counts = []
    merged = False
    for i in range(arch.depth):
      prop = bool(merged and self.reduction is not None and getattr(self.reduction, "prop_attn", False))
      n_before = tokens.num_tokens
      tokens = Block(
          num_heads=arch.num_heads, mlp_dim=arch.mlp_dim, layer=i, depth=arch.depth, reduction=self.reduction,
          prop_attn_active=prop, qkv_bias=self.qkv_bias, layer_scale=self.layer_scale,
          drop_path=self.drop_path * i / max(arch.depth - 1, 1), attention=self.attention,
          gelu_approximate=self.gelu_approximate, dtype=self.dtype,
          param_dtype=self.param_dtype, interpret=self.interpret, name=f"blocks_{i}")(tokens, deterministic=not train)
      tokens = tokens.replace(x=constrain_batch(tokens.x))
      merged = merged or tokens.num_tokens != n_before or tokens.mask is not None
      counts.append(tokens.num_tokens)

    x = tokens.x
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    if self.pool == "cls":
      x = norm("norm")(x)
      pooled, pooled_dist = x[:, 0], (x[:, 1] if self.distilled else None)
    else:
      k = tokens.num_prefix
      w = tokens.size[:, k:] * (1.0 if tokens.mask is None else tokens.mask[:, k:])
      pooled = jnp.einsum("bnc,bn->bc", x[:, k:].astype(jnp.float32), w) / w.sum(-1, keepdims=True)
      pooled = norm("fc_norm")(pooled.astype(x.dtype))
      pooled_dist = None
    if self.num_classes:
      head = lambda name: nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                                   kernel_init=nn.initializers.zeros, name=name)
      logits = head("head")(pooled)
      if self.distilled:
        dist = head("head_dist")(pooled_dist)
        logits = (logits, dist) if distill_logits else (logits + dist) / 2
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
