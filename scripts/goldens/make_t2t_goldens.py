"""Golden files for T2T-ViT parity: the OFFICIAL yitu-opensource/T2T-ViT models on random weights.

    python scripts/goldens/make_t2t_goldens.py --t2t /path/to/T2T-ViT/checkout --out tests/golden

`--t2t` is a checkout of https://github.com/yitu-opensource/T2T-ViT (the directory that contains
`models/`). Its models package is imported from there at run time; no official code lives in this
repo. The commit is read with `git -C <t2t> rev-parse HEAD` (or pass `--commit` for an exported tree).

The official files import timm.models.helpers / registry / layers, which timm 1.0.31 still
provides as deprecated aliases, so they run unchanged; the only shim is tests/torch_compat.py's
torchvision work-around, needed to import timm beside a CPU-only torch.

Models (eval, fp32, CPU), weights from tests/golden/weights.py t2t_random_state_dict (numpy only;
pos_embed keeps the official sinusoid table), images np.random.default_rng(IMAGE_SEED).standard_normal
in NHWC (the test regenerates both from the seeds, so neither is stored):

  t2t_vit_7     performer stem, 224 px, weight seed 0, qk_scale = 256 ** -0.5 (the released
                checkpoints' scale: the official factory sets it when pretrained=True)
  t2t_vit_t_14  transformer stem, 64 px, weight seed 1, qk_scale None (head_dim ** -0.5)

For each, tests/golden/t2t_<model>.npz holds
  logits      (2, 1000) float32
  project     (2, 4, C) float32  the stem output (tokens_to_token) of the first 4 tokens
  block_last  (2, 4, C) float32  the last block's output of the first 4 tokens (before the norm)
and t2t_<model>.json the provenance, the seeds, the official constructor arguments, the official
state-dict shapes (from which the test redraws the weights) and the output shape of every stem
stage and block (read with forward hooks).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL_REPO = "https://github.com/yitu-opensource/T2T-ViT"
OFFICIAL_FILES = ("models/t2t_vit.py", "models/token_transformer.py", "models/token_performer.py",
                  "models/transformer_block.py")
IMAGE_SEED = 100
BATCH = 2
NUM_SAVED_TOKENS = 4
# name -> (weight seed, image size, qk_scale passed to the official factory)
MODELS = {
    "t2t_vit_7": (0, 224, 256 ** -0.5),
    "t2t_vit_t_14": (1, 64, None),
}
STAGES = ("soft_split0", "attention1", "soft_split1", "attention2", "soft_split2", "project")


def _load_file_module(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _official_commit(checkout: pathlib.Path, commit_arg: str | None) -> str:
    if commit_arg:
        return commit_arg
    proc = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{checkout} is not a git checkout; pass --commit <sha>")
    return proc.stdout.strip()


def make_golden(name, out_dir, checkout, commit, weights, torch, t2t_models):
    seed, image_size, qk_scale = MODELS[name]
    kwargs = {"img_size": image_size}
    if qk_scale is not None:
        kwargs["qk_scale"] = qk_scale
    model = getattr(t2t_models, name)(pretrained=False, **kwargs).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = weights.t2t_random_state_dict(shapes, seed)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert list(missing) == ["pos_embed"] and not unexpected, (missing, unexpected)

    captured = {}

    def hook(key):
        def fn(module, args, output):
            captured[key] = output.detach()
        return fn

    t2t = model.tokens_to_token
    for stage in STAGES:
        getattr(t2t, stage).register_forward_hook(hook(stage))
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(hook(f"blocks_{i}"))

    images = np.random.default_rng(IMAGE_SEED).standard_normal((BATCH, image_size, image_size, 3)).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    stage_shapes = {}
    for key, value in captured.items():
        shape = list(value.shape)
        if key.startswith("soft_split"):  # Unfold gives (B, C*k*k, L); the model transposes it to tokens first
            shape = [shape[0], shape[2], shape[1]]
        stage_shapes[key] = shape
    last = f"blocks_{len(model.blocks) - 1}"
    arrays = {
        "logits": logits.astype(np.float32),
        "project": captured["project"][:, :NUM_SAVED_TOKENS].numpy().astype(np.float32),
        "block_last": captured[last][:, :NUM_SAVED_TOKENS].numpy().astype(np.float32),
    }
    np.savez_compressed(out_dir / f"t2t_{name}.npz", **arrays)
    meta = {
        "official_repo": OFFICIAL_REPO,
        "official_commit": commit,
        "official_files_sha256": {p: hashlib.sha256((checkout / p).read_bytes()).hexdigest() for p in OFFICIAL_FILES},
        "model": name,
        "constructor": {"pretrained": False, **kwargs},
        "tokens_type": "transformer" if "_t_" in name else "performer",
        "weight_seed": seed,
        "weights": "tests/golden/weights.py t2t_random_state_dict(shapes of state_dict(), seed)",
        "image_seed": IMAGE_SEED,
        "images": f"np.random.default_rng({IMAGE_SEED}).standard_normal(({BATCH}, {image_size}, {image_size}, 3)), "
                  "float32, NHWC",
        "stage_shapes": stage_shapes,
        "state_dict_shapes": {k: list(v) for k, v in shapes.items()},
        "logits_std": float(logits.std()),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "command": "python scripts/goldens/make_t2t_goldens.py --t2t <checkout> --out tests/golden",
    }
    with open(out_dir / f"t2t_{name}.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    return meta


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--t2t", required=True, type=pathlib.Path, help="checkout of yitu-opensource/T2T-ViT")
    parser.add_argument("--out", default=REPO_ROOT / "tests" / "golden", type=pathlib.Path)
    parser.add_argument("--commit", default=None, help="official commit sha, if --t2t is not a git checkout")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args(argv)
    checkout = args.t2t.resolve()
    if not (checkout / "models" / "t2t_vit.py").is_file():
        raise SystemExit(f"{checkout} does not contain models/t2t_vit.py")
    commit = _official_commit(checkout, args.commit)

    torch_compat = _load_file_module("tokax_tests_torch_compat", REPO_ROOT / "tests" / "torch_compat.py")
    weights = _load_file_module("tokax_tests_golden_weights", REPO_ROOT / "tests" / "golden" / "weights.py")
    torch_compat.import_timm()  # the official models import timm
    import torch
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    sys.path.insert(0, str(checkout))
    t2t_models = importlib.import_module("models.t2t_vit")
    for name in args.models:
        meta = make_golden(name, args.out, checkout, commit, weights, torch, t2t_models)
        print(name, "logits std", meta["logits_std"], meta["stage_shapes"])


if __name__ == "__main__":
    main()
