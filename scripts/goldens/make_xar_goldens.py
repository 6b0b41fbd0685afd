"""Golden files for xAR parity: the OFFICIAL OliverRensu/xAR model on random weights.

    python scripts/goldens/make_xar_goldens.py --xar /path/to/xAR/checkout --out tests/golden

`--xar` is a checkout of https://github.com/OliverRensu/xAR (the directory holding models/xar.py);
nothing of it is copied here. The commit is read with `git -C <xar> rev-parse HEAD` (or pass
--commit for a tree without .git).

Configuration: the layout the official code hard-codes (16 x 16 latent of 16 channels, 4 cells of
8 x 8, 1000 classes), at a small size: width 64, 4 heads, 2 + 2 blocks, mlp_ratio 4, no dropout.
The weights are tests/golden/weights.py random_state_dict(shapes, seed) with the RMSNorm weights
moved to 1 + 0.1 N(0, 1) (see _draw_weights); the test redraws them from the json's shapes.

tests/golden/xar_official.npz (float32; B = 2):
  x          (B, 16, 16, 16)  clean latents, NCHW as the official forward takes them
  labels     (B,) int64       [3, 1000]: a class and the null label
  t          (4 * B,)         flow time per (cell, sample), row i * B + b (the official layout)
  noise      (4, B, 64, 16)   noise per cell
  velocity   (B, 256, 16)     official decoder output (cell order), train-mode forward
  loss       ()               official xAR.forward loss
  sample     (B, 16, 16, 16)  official sample_tokens(num_steps=4, cfg=2.0, labels [3, 7]), whose
                              Gaussian draws (cell latents, then each EM increment, in call order)
                              are np.random.default_rng(noise_seed).standard_normal((16, B, 64, 16))

Adaptations at the edges: `flash_attn` (imported, never called) is stubbed; `.cuda()` is the
identity; label dropout is off (label_drop_prob=0, the null label is passed directly); the
logit-normal times and the noises are injected by replacing sample_logit_normal and
torch.randn_like / torch.randn.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import pathlib
import subprocess
import sys
import types

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
WIDTH, HEADS, DEPTH, BATCH, STEPS, CFG = 64, 4, 2, 2, 4, 2.0
WEIGHT_SEED, DATA_SEED, NOISE_SEED = 0, 1, 2


def _load_file_module(name: str, path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def draw_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
  """random_state_dict, with every RMSNorm weight (z_proj_ln, encoder/decoder_norm) at 1 + 0.1 N(0, 1)."""
  weights = _load_file_module("tokax_tests_golden_weights", REPO_ROOT / "tests" / "golden" / "weights.py")
  out = weights.random_state_dict(shapes, seed)
  rng = np.random.default_rng(seed + 1000)
  for name in sorted(out):
    if name in ("z_proj_ln.weight", "encoder_norm.weight", "decoder_norm.weight"):
      out[name] = (1 + 0.1 * rng.standard_normal(out[name].shape)).astype(np.float32)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--xar", required=True, type=pathlib.Path)
  parser.add_argument("--out", default=REPO_ROOT / "tests" / "golden", type=pathlib.Path)
  parser.add_argument("--commit", default=None)
  args = parser.parse_args()
  commit = args.commit or subprocess.run(["git", "-C", str(args.xar), "rev-parse", "HEAD"], capture_output=True,
                                         text=True, check=True).stdout.strip()
  torch_compat = _load_file_module("tokax_tests_torch_compat", REPO_ROOT / "tests" / "torch_compat.py")
  torch_compat.import_timm()  # models/xar.py imports timm.layers
  import torch
  sys.modules.setdefault("flash_attn", types.SimpleNamespace(flash_attn_func=None))
  torch.Tensor.cuda = lambda self, *a, **k: self
  sys.path.insert(0, str(args.xar))
  import models.xar as official  # noqa: E402  (from the checkout)

  torch.manual_seed(0)
  model = official.xAR(img_size=256, vae_stride=16, patch_size=1, encoder_embed_dim=WIDTH, encoder_depth=DEPTH,
                       encoder_num_heads=HEADS, decoder_embed_dim=WIDTH, decoder_depth=DEPTH,
                       decoder_num_heads=HEADS, mlp_ratio=4, vae_embed_dim=16, label_drop_prob=0.0)
  shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()
            if k != "mask" and ".rope." not in k}
  weights = draw_weights(shapes, WEIGHT_SEED)
  missing = model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=False)
  assert not missing.unexpected_keys and all(k == "mask" or ".rope." in k for k in missing.missing_keys), missing

  rng = np.random.default_rng(DATA_SEED)
  x = rng.standard_normal((BATCH, 16, 16, 16)).astype(np.float32)
  labels = np.array([3, 1000])
  t = (1 / (1 + np.exp(-rng.standard_normal(4 * BATCH)))).astype(np.float32)
  noise = rng.standard_normal((4, BATCH, 64, 16)).astype(np.float32)

  model.train()
  noises = iter(torch.from_numpy(n) for n in noise)
  captured = {}
  real_randn_like, real_randn = torch.randn_like, torch.randn
  torch.randn_like = lambda ref, *a, **k: next(noises)
  model.sample_logit_normal = lambda mu=0, sigma=1, size=1: torch.from_numpy(t.copy())
  decoder = model.forward_mae_decoder
  def capture(*a, **k):
    captured["velocity"] = decoder(*a, **k)
    return captured["velocity"]
  model.forward_mae_decoder = capture
  with torch.no_grad():
    loss = model(torch.from_numpy(x), torch.from_numpy(labels).float())
  model.forward_mae_decoder = decoder

  model.eval()
  draws = np.random.default_rng(NOISE_SEED).standard_normal((4 * STEPS, BATCH, 64, 16))
  stream = iter(torch.from_numpy(d) for d in draws)
  torch.randn_like = lambda ref, *a, **k: next(stream).to(ref.dtype)
  torch.randn = lambda *a, **k: next(stream).float()
  with torch.no_grad():
    sample = model.sample_tokens(num_steps=STEPS, cfg=CFG, label=torch.tensor([3, 7]))
  assert next(stream, None) is None, "the sampler drew fewer Gaussians than expected"
  torch.randn_like, torch.randn = real_randn_like, real_randn

  args.out.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.out / "xar_official.npz", x=x, labels=labels, t=t, noise=noise,
                      velocity=captured["velocity"].numpy().astype(np.float32), loss=np.float32(loss.item()),
                      sample=sample.numpy().astype(np.float32))
  files = {p: hashlib.sha256((args.xar / p).read_bytes()).hexdigest()
           for p in ("models/xar.py", "models/rope.py", "models/sampler.py")}
  meta = dict(repository="https://github.com/OliverRensu/xAR", commit=commit, official_file_sha256=files,
              torch=torch.__version__, width=WIDTH, heads=HEADS, encoder_depth=DEPTH, decoder_depth=DEPTH,
              batch=BATCH, sample_steps=STEPS, sample_cfg=CFG, sample_labels=[3, 7], weight_seed=WEIGHT_SEED,
              data_seed=DATA_SEED, noise_seed=NOISE_SEED, weight_shapes={k: list(v) for k, v in shapes.items()},
              command="python scripts/goldens/make_xar_goldens.py --xar <checkout> --out tests/golden")
  (args.out / "xar_official.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
  print(f"loss {loss.item():.6f}; wrote {args.out / 'xar_official.npz'}")


if __name__ == "__main__":
  main()
