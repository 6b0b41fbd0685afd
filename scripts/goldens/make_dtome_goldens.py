"""Golden files for DToMe parity: the OFFICIAL MikeWangWZHL/dymu code on random weights and inputs.

    python scripts/goldens/make_dtome_goldens.py --dymu /path/to/dymu/checkout --out tests/golden \
        [--commit <sha>]

`--dymu` is a checkout of https://github.com/MikeWangWZHL/dymu (the directory holding
src/open_clip/). Its `src/open_clip/tome.py` and `src/open_clip/transformer.py` are imported from
there at run time (as the package `open_clip`, without running its __init__); no official code
lives in this repo. The commit is read with `git -C <dymu> rev-parse HEAD`; for an exported tree
without .git pass `--commit <sha>` (the committed goldens used
c57d75a1a5ef82ee3ed18181253fbb5ca3558951). Only src/open_clip is needed:

    mkdir -p /tmp/dymu_checkout
    git -C <dymu mirror or clone> archive c57d75a1a5ef82ee3ed18181253fbb5ca3558951 src/open_clip \
        | tar -x -C /tmp/dymu_checkout

The generator is deterministic (two runs give byte-identical arrays); ~3 min on 2 CPU cores.

Three files, each with a .json of provenance, versions, adaptations and decision margins:

tests/golden/dtome_vit_ti_cls.npz: tome.py `ToMEVisionTransformer` (the timm-based DyMU ViT, blocks
  `ToMEBlock`) at ViT-Ti/16 size (width 192, depth 12, 3 heads, 224 px, class token,
  global_pool="token", no pre-norm: exactly what tokax's ViT expresses; timm parameter names),
  weight seed 0, eval, fp32, CPU.
tests/golden/dtome_vit_ti_gap.npz: the same without a class token (global_pool="avg"), seed 1.
  Its official head pools the UNWEIGHTED mean of the merged tokens, tokax's ViT the size-weighted
  mean, so the golden holds the final token features instead of logits.
tests/golden/dtome_clip_blocks.npz: transformer.py `ToMEOpenAITransformer` (the open_clip block
  stack of DyMU's CLIP ViT-L/14 LLaVA models: nn.MultiheadAttention, in_proj_weight) with width
  96, 6 blocks, 3 heads, on random (B, 65, 96) tokens (token 0 = class token), seed 2. The whole
  open_clip VisionTransformer has ln_pre, a bias-free patch conv and a projection, which tokax's
  ViT does not express, so this golden is at the block level: tokax's Block stack is compared.
  Built with LayerNorm eps 1e-6 and nn.GELU (the constructor's norm_layer / act_layer arguments)
  to match tokax's Block (open_clip's CLIP-L uses eps 1e-5 and QuickGELU).

For every setting (tag) of a file:
  calibration: update_threshold=True (the official "threshold finding" mode), 2 batches of 4
    through the batch-level merge; after each batch the blocks' `threshold` buffers are read.
  inference: update_threshold=False, each of 3 other inputs alone (B == 1: the official
    instance-level path with the calibrated thresholds).

Keys (<tag>_ prefix; I = 3 inference inputs, K = 2 batches of B = 4, L blocks, N = N0 input
tokens; valid tokens first, rows past an input's count are zero):
  images / tokens       uint8 (11, 224, 224, 3) NHWC images (float = (u8 / 255 - 0.5) / 0.25 in
                        float32; first 8 = calibration, last 3 = inference), or float32
                        (11, 65, 96) block inputs
  <tag>_thresholds      (K, L) float32 buffer values after each calibration batch
  <tag>_calib_ntoks     (K, B, L) int32 valid tokens per image after each block (output_stats)
  <tag>_calib_out       (K, B, 1000) logits, or (K, B, N, C) final features (padded)
  <tag>_calib_pos       (K, B, N, N0) uint8 final pos_tracking (0/1 source matrix, padded)
  <tag>_infer_ntoks     (I, L) int32 tokens after each block, per input
  <tag>_infer_out       (I, 1000) logits, or (I, N, C) final features (padded)
  <tag>_infer_pos       (I, N, N0) uint8 final pos_tracking, <tag>_infer_size (I, N) float32

Adaptations at the edges (also listed in each json):
  - `ipdb`, `einops` and `transformers` are not installed: ipdb is imported but unused (empty
    stub); einops.rearrange is used once, as 'b i j -> (b i) j' (stub: reshape(-1, last), asserts
    the pattern); transformers.modeling_outputs.ModelOutput is only the base of an output
    dataclass never built here (stub: empty class).
  - torch.argsort inside tome.py is made STABLE (a proxy for tome.py's `torch` global). The
    batch-level merge moves padding last with torch.argsort on a 0/1 key, which torch sorts
    unstably, so the order of valid tokens (and with it the next layer's A/B split) is
    implementation-defined. The json records the thresholds of the unpatched run for comparison.
  - timm's fused attention (F.scaled_dot_product_attention, timm's default) is left on: the
    official non-fused branch adds log(size) after the softmax.
  - each calibration batch is run in eval mode with blocks' update_threshold=True (the official
    alternative to model.train(); dropout rates are 0 either way).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import types

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL_REPO = "https://github.com/MikeWangWZHL/dymu"
OFFICIAL_FILES = ("src/open_clip/tome.py", "src/open_clip/transformer.py")
NUM_BATCHES, BATCH, NUM_INFER = 2, 4, 3
IMAGE_SEED = 7
TOKEN_SEED = 8
# image i's redundancy: (low-res grid or 0 for white noise, noise std)
IMAGE_RECIPE = [(4, 0.05), (14, 0.3), (0, 1.0), (7, 0.1), (2, 0.02), (28, 0.5), (0, 1.0), (4, 0.2),
                (2, 0.05), (7, 0.3), (0, 1.0)]
VIT = dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3)
VIT_MODELS = {  # name -> (class token, global_pool, weight seed, settings)
    "dtome_vit_ti_cls": (True, "token", 0, {
        "const": dict(r_total=120, r_schedule="constant", max_r_per_instance_ratio=None),
        "linear_maxr": dict(r_total=120, r_schedule="linear", max_r_per_instance_ratio=1.5),
    }),
    "dtome_vit_ti_gap": (False, "avg", 1, {
        "const": dict(r_total=120, r_schedule="constant", max_r_per_instance_ratio=None),
    }),
}
BLOCKS = dict(width=96, layers=6, heads=3, tokens=65, seed=2)
BLOCK_SETTINGS = {"const": dict(r_total=36, r_schedule="constant", max_r_per_instance_ratio=None)}
BLOCK_NAME = "dtome_clip_blocks"
# tokax / timm block names -> open_clip ToMEResidualAttentionBlock names
OPENCLIP_BLOCK_NAMES = {
    "norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
    "attn.qkv.weight": "attn.in_proj_weight", "attn.qkv.bias": "attn.in_proj_bias",
    "attn.proj.weight": "attn.out_proj.weight", "attn.proj.bias": "attn.out_proj.bias",
    "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}
ADAPTATIONS = [
    "stub modules: ipdb (imported, unused), einops.rearrange (only 'b i j -> (b i) j' = "
    "reshape(-1, last)), transformers.modeling_outputs.ModelOutput (base of an output dataclass "
    "never built here)",
    "tome.py's `torch` global is a proxy whose argsort is stable (torch.sort(stable=True)); all "
    "other torch calls are unchanged. Reason: the batch-level merge's torch.argsort on the 0/1 "
    "padding mask is unstable in torch, making the order of valid tokens implementation-defined; "
    "see unstable_sort_thresholds for the unpatched run",
    "calibration runs in eval mode with every block's update_threshold=True (the official "
    "alternative to training mode); inference sets update_threshold=False and feeds one input at "
    "a time (the official instance-level B == 1 path)",
]


def images_from_recipe() -> np.ndarray:
  """(11, 224, 224, 3) uint8 images of graded redundancy (numpy only; the test reads them)."""
  rng = np.random.default_rng(IMAGE_SEED)
  out = []
  for grid, noise in IMAGE_RECIPE:
    base = rng.standard_normal((grid, grid, 3)) if grid else np.zeros((1, 1, 3))
    base = np.kron(base, np.ones((224 // max(grid, 1), 224 // max(grid, 1), 1)))
    img = 0.5 + 0.2 * base + noise * 0.2 * rng.standard_normal((224, 224, 3))
    out.append(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))
  return np.stack(out)


def image_floats(u8: np.ndarray) -> np.ndarray:
  return (u8.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) / np.float32(0.25)


def block_tokens() -> np.ndarray:
  """(11, 65, 96) float32 tokens: clustered rows with per-input spread (graded redundancy)."""
  rng = np.random.default_rng(TOKEN_SEED)
  out = []
  for i in range(NUM_BATCHES * BATCH + NUM_INFER):
    centres = rng.standard_normal((4 + 3 * i, BLOCKS["width"]))
    pick = rng.integers(0, centres.shape[0], BLOCKS["tokens"])
    spread = 0.2 + 0.15 * (i % 5)
    out.append(centres[pick] + spread * rng.standard_normal((BLOCKS["tokens"], BLOCKS["width"])))
  return np.stack(out).astype(np.float32)


def block_weight_shapes() -> dict[str, tuple[int, ...]]:
  c, hidden = BLOCKS["width"], 4 * BLOCKS["width"]
  per = {"norm1.weight": (c,), "norm1.bias": (c,), "attn.qkv.weight": (3 * c, c), "attn.qkv.bias": (3 * c,),
         "attn.proj.weight": (c, c), "attn.proj.bias": (c,), "norm2.weight": (c,), "norm2.bias": (c,),
         "mlp.fc1.weight": (hidden, c), "mlp.fc1.bias": (hidden,), "mlp.fc2.weight": (c, hidden),
         "mlp.fc2.bias": (c,)}
  return {f"blocks.{i}.{k}": v for i in range(BLOCKS["layers"]) for k, v in per.items()}


def _load_file_module(name: str, path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _official_commit(root: pathlib.Path, commit_arg: str | None) -> tuple[str, str]:
  try:
    top, sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.split()
    if pathlib.Path(top).resolve() != root:
      raise subprocess.CalledProcessError(1, "git")
    if commit_arg and commit_arg != sha:
      raise SystemExit(f"--commit {commit_arg} disagrees with {root} HEAD {sha}")
    return sha, "git rev-parse HEAD of --dymu"
  except (subprocess.CalledProcessError, FileNotFoundError):
    if not commit_arg:
      raise SystemExit(f"{root} is not a git checkout: pass --commit <sha>")
    return commit_arg, "--commit argument (the --dymu tree has no .git)"


def _install_stubs() -> None:
  for name in ("ipdb",):
    sys.modules.setdefault(name, types.ModuleType(name))
  einops = types.ModuleType("einops")

  def rearrange(t, pattern):
    assert pattern == "b i j -> (b i) j", pattern
    return t.reshape(-1, t.shape[-1])

  einops.rearrange = rearrange
  sys.modules["einops"] = einops
  transformers = types.ModuleType("transformers")
  outputs = types.ModuleType("transformers.modeling_outputs")
  outputs.ModelOutput = type("ModelOutput", (), {})
  transformers.modeling_outputs = outputs
  sys.modules["transformers"] = transformers
  sys.modules["transformers.modeling_outputs"] = outputs


class _StableSortTorch:
  """torch, except that argsort is stable."""

  def __init__(self, torch):
    self._torch = torch

  def __getattr__(self, name):
    return getattr(self._torch, name)

  def argsort(self, input, dim=-1, descending=False, stable=True):
    return self._torch.sort(input, dim=dim, descending=descending, stable=True).indices


def _import_official(root: pathlib.Path):
  import torch
  pkg = types.ModuleType("open_clip")
  pkg.__path__ = [str(root / "src" / "open_clip")]
  sys.modules["open_clip"] = pkg
  tome = importlib.import_module("open_clip.tome")
  transformer = importlib.import_module("open_clip.transformer")
  return tome, transformer, torch


def _set_sort(tome, torch, stable: bool) -> None:
  tome.torch = _StableSortTorch(torch) if stable else torch


# ------------------------------------------------------------------------------------------------
# margins: how far official decisions are from flipping under float32 noise (own diagnostics)


def _node_max(metric: np.ndarray, valid: np.ndarray, has_cls: bool) -> np.ndarray:
  m = metric.astype(np.float64)
  m = m / np.linalg.norm(m, axis=-1, keepdims=True)
  scores = m[:, 0::2] @ np.swapaxes(m[:, 1::2], -1, -2)
  if has_cls:
    scores[:, 0, :] = -np.inf
  scores = np.where(valid[:, 0::2, None] & valid[:, 1::2][:, None, :], scores, -np.inf)
  return scores.max(-1)


def _threshold_margin(metric, theta, has_cls):
  nm = _node_max(metric, np.ones(metric.shape[:2], bool), has_cls)
  nm = nm[np.isfinite(nm)]
  return float(np.min(np.abs(nm - float(theta)))) if nm.size else None


def _batch_boundary_margin(metric, valid, r, has_cls, max_r):
  nm = _node_max(metric, valid, has_cls)
  if max_r is not None:
    rank = np.argsort(np.argsort(-nm, axis=-1, kind="stable"), axis=-1, kind="stable")
    nm = np.where(rank < max_r, nm, -np.inf)
  t = int(valid.sum(-1).max())
  r = min(r, (t - int(has_cls)) // 2)
  if r <= 0:
    return None
  flat = np.sort(nm.reshape(-1))[::-1]
  rb = r * nm.shape[0]
  if rb >= flat.size or not np.isfinite(flat[rb]):
    return None
  return float(flat[rb - 1] - flat[rb])


def _min_or_none(values):
  values = [v for v in values if v is not None]
  return min(values) if values else None


# ------------------------------------------------------------------------------------------------


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
  out = np.zeros((rows,) + a.shape[1:], a.dtype)
  out[:a.shape[0]] = a
  return out


class _Recorder:
  """Forward hooks on every block's attention: the metric (keys averaged over heads)."""

  def __init__(self, attns):
    self.metrics = []
    for attn in attns:
      attn.register_forward_hook(lambda mod, inp, out: self.metrics.append(out[1].detach().numpy().copy()))


def _run_vit(model, torch, x, pooled: bool):
  """One official forward: (out, ntoks (B, L), pos (B, n, N0), size (B, n), padding (B, n) or None)."""
  with torch.no_grad():
    feats, padding, size, pos = model.forward_features(x)
    out = model.forward_head(feats, padding_mask=padding, size=size) if pooled else feats
  ntoks = np.asarray([model.output_stats[f"block_{i}_ntoks"] for i in range(len(model.blocks))]).T
  return (out.numpy(), ntoks.astype(np.int32), pos.numpy(), size[..., 0].numpy(),
          None if padding is None else padding.numpy())


def _run_blocks(stack, torch, x):
  with torch.no_grad():
    out, padding, size, extra = stack(x)
  ntoks = np.asarray([stack.output_stats[f"block_{i}_ntoks"] for i in range(len(stack.resblocks))]).T
  return (out.numpy(), ntoks.astype(np.int32), extra["pos_trackings"][-1].numpy(), size[..., 0].numpy(),
          None if padding is None else padding.numpy())


def _calibrate_and_infer(build, run, inputs, settings, tome, torch, has_cls, n0, logits: bool):
  """Runs every setting: calibration batches then per-input inference. Returns arrays, meta."""
  arrays, meta = {}, []
  for tag, cfg in settings.items():
    per_sort = {}
    for stable in (False, True):
      _set_sort(tome, torch, stable)
      model, blocks, attns = build(cfg, update_threshold=True)
      rec = _Recorder(attns)
      thresholds, ntoks_all, outs, poss, calib_margins = [], [], [], [], []
      rs = [blk._tome_info["r"] for blk in blocks]
      max_r = [None if cfg["max_r_per_instance_ratio"] is None else int(cfg["max_r_per_instance_ratio"] * r)
               for r in rs]
      for k in range(NUM_BATCHES):
        batch = torch.from_numpy(inputs[k * BATCH:(k + 1) * BATCH])
        rec.metrics.clear()
        out, ntoks, pos, _, padding = run(model, batch)
        thresholds.append([float(blk.threshold) for blk in blocks])
        ntoks_all.append(ntoks)
        n_in = np.concatenate([np.full((BATCH, 1), n0), ntoks[:, :-1]], axis=1)
        for i, metric in enumerate(rec.metrics):
          valid = np.arange(metric.shape[1])[None] < n_in[:, i:i + 1]
          calib_margins.append(None if rs[i] == 0 else
                               _batch_boundary_margin(metric, valid, rs[i], has_cls, max_r[i]))
        if logits:
          outs.append(out)
        else:
          outs.append(np.stack([_pad_rows(o, n0) for o in out]))
        poss.append(np.stack([_pad_rows(p, n0) for p in pos]).astype(np.uint8))
        if padding is not None:
          assert np.all((padding < 0.5).sum(-1) == ntoks[:, -1])
      per_sort[stable] = (np.asarray(thresholds, np.float32), np.stack(ntoks_all), np.stack(outs), np.stack(poss),
                          calib_margins, model, blocks, rec, max_r, rs)
    thresholds, ntoks_all, outs, poss, calib_margins, model, blocks, rec, max_r, rs = per_sort[True]
    unstable = per_sort[False][0]
    arrays[f"{tag}_thresholds"] = thresholds
    arrays[f"{tag}_calib_ntoks"] = ntoks_all
    arrays[f"{tag}_calib_out"] = outs.astype(np.float32)
    arrays[f"{tag}_calib_pos"] = poss

    for blk in blocks:
      blk.update_threshold = False
    i_ntoks, i_out, i_pos, i_size, margins, clip_binding = [], [], [], [], [], 0
    for j in range(NUM_INFER):
      x = torch.from_numpy(inputs[NUM_BATCHES * BATCH + j][None])
      rec.metrics.clear()
      out, ntoks, pos, size, padding = run(model, x)
      assert padding is None
      i_ntoks.append(ntoks[0])
      i_out.append(out[0] if logits else _pad_rows(out[0], n0))
      i_pos.append(_pad_rows(pos[0], n0).astype(np.uint8))
      i_size.append(_pad_rows(size[0], n0))
      merging = [i for i, r in enumerate(rs) if r > 0]
      assert len(rec.metrics) == len(blocks)
      for i in merging:
        margins.append(_threshold_margin(rec.metrics[i], thresholds[-1][i], has_cls))
    arrays[f"{tag}_infer_ntoks"] = np.stack(i_ntoks).astype(np.int32)
    arrays[f"{tag}_infer_out"] = np.stack(i_out).astype(np.float32)
    arrays[f"{tag}_infer_pos"] = np.stack(i_pos)
    arrays[f"{tag}_infer_size"] = np.stack(i_size).astype(np.float32)
    meta.append({
        "tag": tag,
        "config": cfg,
        "r_per_layer": rs,
        "max_r_per_layer": max_r,
        "thresholds_after_each_batch": thresholds.tolist(),
        "unstable_sort_thresholds": unstable.tolist(),
        "max_abs_threshold_diff_unstable_vs_stable_sort": float(np.abs(unstable - thresholds).max()),
        "calib_tokens_after_last_block": ntoks_all[:, :, -1].tolist(),
        "infer_tokens_per_layer": np.stack(i_ntoks).tolist(),
        "min_calibration_boundary_margin": _min_or_none(calib_margins),
        "min_inference_threshold_margin": _min_or_none(margins),
    })
  return arrays, meta


def make_vit_goldens(name, tome, torch, weights, out_dir, provenance):
  has_cls, pool, seed, settings = VIT_MODELS[name]
  u8 = images_from_recipe()
  inputs = np.ascontiguousarray(image_floats(u8).transpose(0, 3, 1, 2))
  n0 = (VIT["img_size"] // VIT["patch_size"]) ** 2 + int(has_cls)
  state = None
  weight_names = None

  def build(cfg, update_threshold):
    nonlocal state, weight_names
    model = tome.ToMEVisionTransformer(
        **VIT, class_token=has_cls, global_pool=pool, merge_mode="batch_level", update_threshold=update_threshold,
        block_fn=tome.ToMEBlock, **cfg).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith(".threshold")}
    if state is None:
      state = weights.random_state_dict(shapes, seed)
      weight_names = sorted(shapes)
    assert sorted(shapes) == weight_names
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.endswith(".threshold") for k in missing), (missing, unexpected)
    assert all(blk.attn.fused_attn for blk in model.blocks), "expected timm's fused attention branch"
    return model, list(model.blocks), [blk.attn for blk in model.blocks]

  run = functools.partial(_run_vit_pooled, torch=torch, pooled=has_cls)
  arrays, meta = _calibrate_and_infer(build, run, inputs, settings, tome, torch, has_cls, n0, logits=has_cls)
  arrays["images"] = u8
  extra = {
      "model": "src/open_clip/tome.py ToMEVisionTransformer(block_fn=ToMEBlock, merge_mode='batch_level', "
               f"class_token={has_cls}, global_pool={pool!r}, **{VIT})",
      "tokax_model": f"ViT(variant='Ti/16', num_classes=1000, class_token={has_cls}, "
                     f"pool={'cls' if has_cls else 'gap'!r})",
      "weight_seed": seed,
      "weight_names": weight_names,
      "weights": "tests/golden/weights.py random_state_dict(state-dict shapes without the *.threshold buffers, seed)",
      "image_recipe": {"seed": IMAGE_SEED, "grid_noise": IMAGE_RECIPE,
                       "float": "(u8 / 255 - 0.5) / 0.25 in float32, NHWC (torch: NCHW)"},
      "outputs": "logits" if has_cls else "final token features (official norm is Identity with global_pool='avg'; "
                                          "tokax's intermediates['features'] in pool='gap')",
      "num_tokens_in": n0,
      "class_token": has_cls,
  }
  _write(out_dir, name, arrays, dict(provenance, **extra, settings=meta))


def _run_vit_pooled(model, batch, *, torch, pooled):
  return _run_vit(model, torch, batch, pooled)


def make_block_goldens(tome, transformer, torch, weights, out_dir, provenance):
  tokens = block_tokens()
  shapes = block_weight_shapes()
  state = weights.random_state_dict(shapes, BLOCKS["seed"])
  n0 = BLOCKS["tokens"]

  def build(cfg, update_threshold):
    stack = transformer.ToMEOpenAITransformer(
        BLOCKS["width"], BLOCKS["layers"], BLOCKS["heads"],
        norm_layer=functools.partial(transformer.LayerNorm, eps=1e-6), act_layer=torch.nn.GELU,
        merge_mode="batch_level", update_threshold=update_threshold, **cfg).eval()
    mapped = {}
    for name, value in state.items():
      _, i, rest = name.split(".", 2)
      mapped[f"resblocks.{i}.{OPENCLIP_BLOCK_NAMES[rest]}"] = torch.from_numpy(value)
    missing, unexpected = stack.load_state_dict(mapped, strict=False)
    assert not unexpected and all(k.endswith(".threshold") for k in missing), (missing, unexpected)

    return stack, list(stack.resblocks), [blk.attn for blk in stack.resblocks]

  run = lambda model, batch: _run_blocks(model, torch, batch)
  arrays, meta = _calibrate_and_infer(build, run, tokens, BLOCK_SETTINGS, tome, torch, True, n0, logits=False)
  arrays["tokens"] = tokens
  extra = {
      "model": "src/open_clip/transformer.py ToMEOpenAITransformer(width=96, layers=6, heads=3, "
               "norm_layer=partial(LayerNorm, eps=1e-6), act_layer=nn.GELU, merge_mode='batch_level') "
               "(blocks ToMEResidualAttentionBlock, class token at index 0)",
      "tokax_model": "6 x tokax.models.vit.Block(num_heads=3, mlp_dim=384) with a class token",
      "weight_seed": BLOCKS["seed"],
      "weight_shapes": {k: list(v) for k, v in shapes.items()},
      "weights": "tests/golden/weights.py random_state_dict(weight_shapes (timm/tokax names), seed), mapped to "
                 "open_clip names by OPENCLIP_BLOCK_NAMES (in_proj_weight = qkv.weight, out_proj = proj, "
                 "ln_1/ln_2 = norm1/norm2, c_fc/c_proj = fc1/fc2)",
      "openclip_names": OPENCLIP_BLOCK_NAMES,
      "token_recipe": {"seed": TOKEN_SEED, "see": "block_tokens() in the generator; stored as `tokens`"},
      "outputs": "final token features (the stack output, no final norm)",
      "num_tokens_in": n0,
      "class_token": True,
  }
  _write(out_dir, BLOCK_NAME, arrays, dict(provenance, **extra, settings=meta))


def _write(out_dir: pathlib.Path, name: str, arrays: dict, meta: dict) -> None:
  out_dir.mkdir(parents=True, exist_ok=True)
  npz = out_dir / f"{name}.npz"
  np.savez_compressed(npz, **arrays)
  meta["npz_keys"] = sorted(arrays)
  (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
  print(f"wrote {npz} ({os.path.getsize(npz) / 1e6:.2f} MB)")
  for s in meta["settings"]:
    print(f"  {s['tag']}: thresholds {np.round(s['thresholds_after_each_batch'][-1], 4).tolist()}")
    print(f"    infer tokens after last block {[t[-1] for t in s['infer_tokens_per_layer']]}, "
          f"margins calib {s['min_calibration_boundary_margin']}, infer {s['min_inference_threshold_margin']}, "
          f"unstable-sort threshold drift {s['max_abs_threshold_diff_unstable_vs_stable_sort']:.2e}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dymu", required=True, type=pathlib.Path, help="checkout of MikeWangWZHL/dymu")
  parser.add_argument("--out", default=REPO_ROOT / "tests" / "golden", type=pathlib.Path)
  parser.add_argument("--commit", default=None, help="official commit sha, if --dymu is not a git checkout")
  args = parser.parse_args(argv)

  root = args.dymu.resolve()
  for f in OFFICIAL_FILES:
    if not (root / f).is_file():
      raise SystemExit(f"{root} does not contain {f}")
  commit, commit_from = _official_commit(root, args.commit)

  torch_compat = _load_file_module("tokax_tests_torch_compat", REPO_ROOT / "tests" / "torch_compat.py")
  weights = _load_file_module("tokax_tests_golden_weights", REPO_ROOT / "tests" / "golden" / "weights.py")
  timm = torch_compat.import_timm()
  _install_stubs()
  tome, transformer, torch = _import_official(root)
  torch.set_num_threads(min(8, os.cpu_count() or 1))
  provenance = {
      "official_repo": OFFICIAL_REPO,
      "official_commit": commit,
      "official_commit_from": commit_from,
      "official_files_sha256": {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in OFFICIAL_FILES},
      "versions": {"timm": timm.__version__, "torch": torch.__version__, "numpy": np.__version__,
                   "python": platform.python_version()},
      "adaptations": ADAPTATIONS,
      "protocol": f"calibration: {NUM_BATCHES} batches of {BATCH} (update_threshold=True, running mean); "
                  f"inference: {NUM_INFER} inputs one at a time with the calibrated thresholds",
      "parity_path": "instance-level (B == 1) threshold path at inference; batch-level path for calibration. "
                     "The official batched inference path (B > 1 with thresholds) is not used: it ranks edges over "
                     "the whole batch without the per-image clip and divides by size + 1e-4.",
      "margin_note": "min_calibration_boundary_margin: smallest gap between the last merged and the first kept "
                     "edge of a batch-level ranking; min_inference_threshold_margin: smallest |edge - theta| at "
                     "inference (float64 recomputation from the official metrics). Gaps near float32 noise "
                     "(~1e-6) could flip a decision in a re-implementation.",
      "command": "python scripts/goldens/make_dtome_goldens.py --dymu <dymu checkout> --out tests/golden "
                 "[--commit <sha>]",
  }
  for name in VIT_MODELS:
    make_vit_goldens(name, tome, torch, weights, args.out, provenance)
  make_block_goldens(tome, transformer, torch, weights, args.out, provenance)


if __name__ == "__main__":
  main()
