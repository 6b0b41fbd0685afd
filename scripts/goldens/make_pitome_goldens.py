"""Golden files for PiToMe parity: the OFFICIAL hchautran/PiToMe merge and timm patches.

    python scripts/goldens/make_pitome_goldens.py --pitome /path/to/PiToMe/checkout --out tests/golden

`--pitome` is a checkout of https://github.com/hchautran/PiToMe (the directory that contains
`algo/pitome/`). Four files of it are imported from there at run time (algo/pitome/merge.py,
patch/timm.py, patch/deit.py, patch/mae.py); no official code lives in this repo. The package
`__init__` files are not executed, because algo/pitome/patch/__init__.py imports every patch,
including the LAVIS/transformers ones (lavis is not installed); the four files are loaded under
a stand-in package with their relative imports intact. The commit is read with
`git -C <pitome> rev-parse HEAD`; for an exported tree without .git pass `--commit <sha>` (the
snapshot used for the committed goldens is 550b5deed94aadfeac28bfbe381d87e672044a40).

It writes, all on the CPU in float32:

tests/golden/pitome_unit.npz (+ .json): `pitome_vision(metric, ratio, margin, class_token,
  use_bsm_pitome)` + `merge_wavg` + `merge_source` on random inputs (B=2, N=197, D=64, C=16):

  metric (2, 197, 64), x (2, 197, 16), size (2, 197) integer sizes 1..4 (float32)
  x_<tag>       (2, N', 16)  merge_wavg(merge, x, size) features
  size_<tag>    (2, N')      merge_wavg sizes
  dst_<tag>     (2, 197)     int32, the output token each input went to: merge_source(merge, x)
                             (0/1, exactly one 1 per column, asserted) stored as its argmax over
                             the outputs, i.e. the merge groups in output order

  tags `<mode>_r<ratio>_m<margin>[_nocls|_n9]`, mode "pitome" or "bsm" (use_bsm_pitome=True);
  `_n9` uses the first 9 tokens only (r = 0 at ratio 0.9: pitome_bsm reorders without merging).

tests/golden/pitome_<model>.npz (+ .json) for two timm models with random weights
  (tests/golden/weights.py), eval, images as in the ToMe goldens:

  deit_small_patch16_224 (weight seed 0) with patch/deit.py apply_patch: DeiT mode order (first
    ceil(L/2) layers pitome_bsm), class-token head.
  vit_small_patch16_224 with global_pool="avg" (weight seed 1) with patch/mae.py apply_patch: MAE
    mode order (the opposite) and the MAE size-weighted global pooling, INCLUDING its divisor bug
    (divides by T = 3, the image channels, instead of the patch count).

  images        (2, 224, 224, 3) NHWC (torch gets NCHW)
  logits_dense  (2, 1000) stock timm model
  logits_<tag>  (2, 1000) patched model, model.ratio = ratio
  tokens_<tag>  (12,) int32 tokens after each block
  source_<tag>  (2, N_final, 197) model._info["source"] (trace_source=True); absent for r1.0
  pooled_<tag>  (2, 384) MAE only: the input of fc_norm (the official, /3, pooled vector)

  tags r1.0 (ratio 1.0: must equal logits_dense), r0.9, r0.95.

Adaptations at the edges (the official patches target timm 0.4.12; we run timm 1.0.31); each is
listed in the JSON and none touches the merge code or the blocks:
- model.dist_token = None and model.pre_logits = nn.Identity() (attributes timm 0.4.12 had; the
  DeiT patch's forward_features reads them).
- model.forward_features is wrapped to drop timm 1.0's attn_mask/is_causal keywords (always None /
  False here), since the patched forward_features(x) takes none.
- model.forward_head is replaced by model.head: the patched forward_features already returns the
  pooled vector (the DeiT patch applies norm and takes the class token; the MAE patch pools and
  applies fc_norm), which timm 0.4.12's forward fed straight to the head.
- the patched forward returns (logits, flop) by default (return_flop=True): we call
  model(x, return_flop=False). The MAE patch's flop counter moves a tensor to 'cuda', so it could
  not run on a CPU-only machine anyway.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import types

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL_REPO = "https://github.com/hchautran/PiToMe"
OFFICIAL_FILES = ("algo/pitome/merge.py", "algo/pitome/patch/timm.py", "algo/pitome/patch/deit.py",
                  "algo/pitome/patch/mae.py")
IMAGE_SEED = 100
IMAGE_SHAPE = (2, 224, 224, 3)
UNIT_SEED = 7
UNIT_SHAPE = (2, 197, 64)  # B, N (with a class token), D
UNIT_CHANNELS = 16
# (tag suffix, ratio, margin, class_token)
# (tag suffix, ratio, margin, class_token, tokens used (the first n of the 197), modes)
UNIT_CASES = (
    [(f"r{ratio}_m{margin}", ratio, margin, True, 197, ("pitome", "bsm"))
     for ratio in (0.9, 0.95) for margin in (0.75, 0.5, 0.125)]
    + [("r0.9_m0.5_nocls", 0.9, 0.5, False, 197, ("pitome", "bsm")),
       ("r0.5_m0.75", 0.5, 0.75, True, 197, ("pitome", "bsm")),
       # 8 patch tokens at ratio 0.9: r = 0. pitome_bsm still reorders the tokens; pitome itself
       # fails there (max over an empty axis), so only bsm has this case.
       ("r0.9_m0.5_n9", 0.9, 0.5, True, 9, ("bsm",))])
MODELS = {  # name -> (timm model, create kwargs, weight seed, official patch module)
    "deit_small_patch16_224": ("deit_small_patch16_224", {}, 0, "deit"),
    "vit_small_patch16_224_mae": ("vit_small_patch16_224", {"global_pool": "avg"}, 1, "mae"),
}
RATIOS = (1.0, 0.9, 0.95)
ADAPTATIONS = [
    "algo/pitome/merge.py, patch/timm.py, patch/deit.py and patch/mae.py are loaded under a stand-in package "
    "without executing algo/pitome/__init__.py or patch/__init__.py (the latter imports the LAVIS and "
    "transformers patches; lavis is not installed).",
    "model.dist_token = None and model.pre_logits = nn.Identity() before apply_patch: timm 0.4.12 "
    "attributes that the DeiT patch's forward_features reads and timm 1.0 no longer has.",
    "model.forward_features wrapped to accept and drop timm 1.0's attn_mask=None / is_causal=False "
    "keywords; the patched forward_features(x) takes none.",
    "model.forward_head replaced by model.head (timm 0.4.12's forward = head(forward_features(x))): the "
    "patched forward_features already returns the pooled vector (DeiT: norm then class token; MAE: "
    "size-weighted sum / 3 then fc_norm).",
    "forward called as model(x, return_flop=False): the patched forward returns (logits, flop) by default, "
    "and the MAE patch's flop counter moves a tensor to 'cuda'.",
]


def _load_file_module(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load_official(pitome_dir: pathlib.Path) -> dict[str, types.ModuleType]:
    """merge, patch.timm, patch.deit, patch.mae of the checkout, without the package __init__ files."""
    root = pitome_dir / "algo" / "pitome"
    for name, path in (("_pitome_official", root), ("_pitome_official.patch", root / "patch")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    return {
        "merge": _load_file_module("_pitome_official.merge", root / "merge.py"),
        "timm": _load_file_module("_pitome_official.patch.timm", root / "patch" / "timm.py"),
        "deit": _load_file_module("_pitome_official.patch.deit", root / "patch" / "deit.py"),
        "mae": _load_file_module("_pitome_official.patch.mae", root / "patch" / "mae.py"),
    }


def _official_commit(pitome_dir: pathlib.Path, commit_arg: str | None) -> tuple[str, str]:
    try:
        top, sha = subprocess.run(
            ["git", "-C", str(pitome_dir), "rev-parse", "--show-toplevel", "HEAD"], check=True,
            capture_output=True, text=True).stdout.split()
        if pathlib.Path(top).resolve() != pitome_dir:
            raise subprocess.CalledProcessError(1, "git")
        if commit_arg and commit_arg != sha:
            raise SystemExit(f"--commit {commit_arg} disagrees with {pitome_dir} HEAD {sha}")
        return sha, "git rev-parse HEAD of --pitome"
    except (subprocess.CalledProcessError, FileNotFoundError, ValueError):
        if not commit_arg:
            raise SystemExit(f"{pitome_dir} is not a git checkout: pass --commit <sha>")
        return commit_arg, "--commit argument (the --pitome tree has no .git)"


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions(timm, torch) -> dict[str, str]:
    return {"timm": timm.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def decision_margins(metric: np.ndarray, ratio: float, margin: float, bsm: bool, class_token: bool,
                     alpha: float = 1.0) -> dict[str, float | None]:
    """Smallest float64 gaps behind one layer's PiToMe decisions (own diagnostic, not official code).

    energy: smallest gap between energy-adjacent tokens (every rank matters: it sets the A/B split,
      which tokens are protected and the output order). dest: best - second-best B partner of a
      merged A token. edge (bsm only): smallest gap between adjacent sorted match scores (sets which
      A tokens merge and the order of the unmerged ones). Min over the batch; None if no merge.
    A gap near float32 noise (~1e-7 for energies) means a re-implementation may decide otherwise.
    """
    m = metric[:, 1:] if class_token else metric
    m = m.astype(np.float64)
    t = m.shape[1]
    if ratio >= 1.0 or t < 2:
        return {"energy": None, "dest": None, "edge": None}
    r = math.floor(t - t * ratio)
    m = m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)
    sim = m @ np.swapaxes(m, -1, -2)
    shifted = sim - margin
    energy = np.where(shifted > 0, shifted, alpha * np.expm1(np.minimum(shifted, 0))).mean(-1)
    order = np.argsort(-energy, axis=-1, kind="stable")
    sorted_energy = np.take_along_axis(energy, order, axis=-1)
    energy_gap = float(np.min(sorted_energy[:, :-1] - sorted_energy[:, 1:]))
    if r == 0 and not bsm:
        return {"energy": energy_gap, "dest": None, "edge": None}
    if bsm:
        a_idx, b_idx = order[:, 0::2], order[:, 1::2]
    else:
        a_idx, b_idx = order[:, 0:2 * r:2], order[:, 1:2 * r:2]
    scores = np.stack([sim[b][np.ix_(a_idx[b], b_idx[b])] for b in range(sim.shape[0])])
    top2 = -np.sort(-scores, axis=-1)[..., :2]
    if bsm:
        node_max = top2[..., 0]
        edge_order = np.argsort(-node_max, axis=-1, kind="stable")
        sorted_max = np.take_along_axis(node_max, edge_order, axis=-1)
        edge_gap = float(np.min(sorted_max[:, :-1] - sorted_max[:, 1:]))
        merged = np.take_along_axis(top2, edge_order[:, :r, None], axis=1)
    else:
        edge_gap = None
        merged = top2
    dest_gap = float(np.min(merged[..., 0] - merged[..., 1])) if merged.shape[-1] > 1 and r > 0 else None
    return {"energy": energy_gap, "dest": dest_gap, "edge": edge_gap}


def _min_or_none(values):
    values = [v for v in values if v is not None]
    return min(values) if values else None


def make_unit_goldens(official, out_dir: pathlib.Path, provenance: dict) -> None:
    import torch

    merge_mod = official["merge"]
    rng = np.random.default_rng(UNIT_SEED)
    batch, n, dim = UNIT_SHAPE
    metric = rng.standard_normal(UNIT_SHAPE).astype(np.float32)
    x = rng.standard_normal((batch, n, UNIT_CHANNELS)).astype(np.float32)
    size = rng.integers(1, 5, size=(batch, n)).astype(np.float32)
    arrays = {"metric": metric, "x": x, "size": size}
    cases = []
    for mode in ("pitome", "bsm"):
        for suffix, ratio, margin, class_token, num, modes in UNIT_CASES:
            if mode not in modes:
                continue
            tag = f"{mode}_{suffix}"
            with torch.no_grad():
                merge = merge_mod.pitome_vision(
                    torch.from_numpy(metric[:, :num]), ratio=ratio, margin=margin, class_token=class_token,
                    use_bsm_pitome=(mode == "bsm"))
                x_out, size_out = merge_mod.merge_wavg(
                    merge, torch.from_numpy(x[:, :num]), torch.from_numpy(size[:, :num])[..., None])
                source = merge_mod.merge_source(merge, torch.from_numpy(x[:, :num]))
            source = source.numpy().astype(np.float32)
            assert np.all(source.sum(1) == 1.0), f"{tag}: an input lives in != 1 output"
            assert np.allclose(np.einsum("bmn,bn->bm", source, size[:, :num]), size_out.numpy()[..., 0]), tag
            arrays[f"x_{tag}"] = x_out.numpy().astype(np.float32)
            arrays[f"size_{tag}"] = size_out.numpy()[..., 0].astype(np.float32)
            arrays[f"dst_{tag}"] = source.argmax(1).astype(np.int32)
            gaps = decision_margins(metric[:, :num], ratio, margin, mode == "bsm", class_token)
            cases.append({"tag": tag, "mode": mode, "ratio": ratio, "margin": margin, "class_token": class_token,
                          "num_tokens": num, "num_out": int(source.shape[1]), "min_energy_margin": gaps["energy"],
                          "min_destination_margin": gaps["dest"], "min_edge_margin": gaps["edge"]})
    np.savez_compressed(out_dir / "pitome_unit.npz", **arrays)
    meta = dict(provenance, **{
        "what": "algo/pitome/merge.py pitome_vision(metric, ratio, margin, class_token, "
                "use_bsm_pitome=(mode == 'bsm')) then merge_wavg(merge, x, size[..., None]) and "
                "merge_source(merge, x) (source from the identity), stored as dst = source.argmax(1)",
        "seed": UNIT_SEED,
        "inputs": f"rng = np.random.default_rng({UNIT_SEED}); metric = rng.standard_normal({UNIT_SHAPE}); "
                  f"x = rng.standard_normal(({batch}, {n}, {UNIT_CHANNELS})); size = rng.integers(1, 5, "
                  f"size=({batch}, {n})); all float32",
        "alpha": 1.0,
        "cases": cases,
        "npz_keys": sorted(arrays),
        "margin_note": "min_*_margin: smallest float64 gaps behind the decisions (see decision_margins in "
                       "the generator); near float32 noise a re-implementation may legitimately differ.",
    })
    (out_dir / "pitome_unit.json").write_text(json.dumps(meta, indent=2) + "\n")
    worst = _min_or_none([c["min_energy_margin"] for c in cases])
    print(f"unit: {len(cases)} cases, smallest energy gap {worst:.2e}")


def _check_patch_applies(model) -> None:
    """Fails loudly if the model uses a timm feature that the official PiToMe patches ignore."""
    import torch.nn as nn
    from timm.models.vision_transformer import Attention, Block

    for i, blk in enumerate(model.blocks):
        where = f"blocks[{i}]"
        assert type(blk) is Block, f"{where} is {type(blk)}, the patch expects timm Block"
        assert type(blk.attn) is Attention, f"{where}.attn is {type(blk.attn)}"
        for attr in ("ls1", "ls2"):
            assert isinstance(getattr(blk, attr), nn.Identity), f"{where}.{attr}: LayerScale"
        for attr in ("q_norm", "k_norm", "norm"):
            assert isinstance(getattr(blk.attn, attr), nn.Identity), f"{where}.attn.{attr}"
        assert getattr(blk.attn, "gate", None) is None, f"{where}.attn.gate"
    for attr in ("patch_drop", "norm_pre"):  # skipped by the patched forward_features
        assert isinstance(getattr(model, attr), nn.Identity), attr
    assert model.attn_pool is None and model.cls_token is not None and not model.no_embed_class
    assert model.num_prefix_tokens == 1 and model.pos_embed.shape[1] == model.patch_embed.num_patches + 1
    if model.global_pool == "avg":  # MAE patch: fc_norm after pooling, no final norm
        assert isinstance(model.norm, nn.Identity) and not isinstance(model.fc_norm, nn.Identity)
    else:  # DeiT patch: final norm, class token, then the head
        assert model.global_pool == "token" and isinstance(model.fc_norm, nn.Identity)


def _adapt_to_timm_1(model) -> None:
    """The edge shims listed in ADAPTATIONS (timm 0.4.12 -> 1.0 interface only)."""
    patched_forward_features = model.forward_features

    def forward_features(x, attn_mask=None, is_causal=False):
        assert attn_mask is None and not is_causal
        return patched_forward_features(x)

    model.forward_features = forward_features
    model.forward_head = lambda x, pre_logits=False: x if pre_logits else model.head(x)


def make_model_goldens(key, official, out_dir, provenance, timm, weights) -> None:
    import torch
    import torch.nn as nn

    timm_name, kwargs, seed, patch_name = MODELS[key]
    model = timm.create_model(timm_name, pretrained=False, **kwargs).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = weights.random_state_dict(shapes, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    _check_patch_applies(model)
    depth = len(model.blocks)
    n0 = model.patch_embed.num_patches + 1

    images = np.random.default_rng(IMAGE_SEED).standard_normal(IMAGE_SHAPE).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    arrays = {"images": images}
    with torch.no_grad():
        arrays["logits_dense"] = model(x).numpy().astype(np.float32)

    model.dist_token = None
    model.pre_logits = nn.Identity()
    official[patch_name].apply_patch(model, trace_source=True)
    _adapt_to_timm_1(model)
    margins_used = [blk.margin for blk in model.blocks]

    counts, metrics, pooled = [], [], []
    for blk in model.blocks:
        blk.register_forward_hook(lambda mod, inp, out: counts.append(int(out.shape[1])))
        blk.attn.register_forward_hook(lambda mod, inp, out: metrics.append(out[1].numpy()))
    if patch_name == "mae":
        model.fc_norm.register_forward_hook(lambda mod, inp, out: pooled.append(inp[0].numpy()))

    first = math.ceil(depth * 0.5)  # the per-layer modes the patched forward rebuilds on every call
    modes = (["bsm"] * first + ["pitome"] * (depth - first) if patch_name == "deit"
             else ["pitome"] * first + ["bsm"] * (depth - first))
    settings = []
    for ratio in RATIOS:
        tag = f"r{ratio}"
        model.ratio = ratio
        counts.clear()
        metrics.clear()
        pooled.clear()
        with torch.no_grad():
            logits = model(x, return_flop=False).numpy().astype(np.float32)
        assert len(counts) == depth and np.all(np.isfinite(logits)), tag
        arrays[f"logits_{tag}"] = logits
        arrays[f"tokens_{tag}"] = np.asarray(counts, np.int32)
        if pooled:
            arrays[f"pooled_{tag}"] = pooled[-1].astype(np.float32)
        source = model._info["source"]
        if ratio < 1.0:
            source = source.numpy().astype(np.float32)
            assert source.shape == (IMAGE_SHAPE[0], counts[-1], n0), (tag, source.shape)
            assert np.all(source.sum(1) == 1.0), f"{tag}: a patch lives in != 1 token"
            size = model._info["size"].numpy()[..., 0]
            assert np.array_equal(source.sum(-1), size), f"{tag}: source rows != sizes"
            arrays[f"source_{tag}"] = source
        else:
            assert source is None and counts == [n0] * depth, tag
        gaps = [decision_margins(metric, ratio, margin, mode == "bsm", True)
                for metric, margin, mode in zip(metrics, margins_used, modes)]
        settings.append({
            "tag": tag, "ratio": ratio, "tokens_after_block": counts.copy(),
            "has_source": ratio < 1.0,
            "min_energy_margin": _min_or_none([g["energy"] for g in gaps]),
            "min_destination_margin": _min_or_none([g["dest"] for g in gaps]),
            "min_edge_margin": _min_or_none([g["edge"] for g in gaps]),
            "energy_margin_per_layer": [g["energy"] for g in gaps],
            "destination_margin_per_layer": [g["dest"] for g in gaps],
            "edge_margin_per_layer": [g["edge"] for g in gaps],
            "max_abs_logit": float(np.abs(logits).max()),
        })

    r1_vs_dense = float(np.abs(arrays["logits_r1.0"] - arrays["logits_dense"]).max())
    print(f"{key}: max|logits_r1.0 - logits_dense| = {r1_vs_dense:.3e}")
    assert r1_vs_dense < 1e-4, "patched ratio=1 model does not reproduce the stock timm model"

    np.savez_compressed(out_dir / f"pitome_{key}.npz", **arrays)
    meta = dict(provenance, **{
        "model": key,
        "timm_model": timm_name,
        "timm_kwargs": kwargs,
        "patch_call": f"algo/pitome/patch/{patch_name}.py apply_patch(model, trace_source=True); "
                      "model.ratio = ratio; model(x, return_flop=False)",
        "weights": "tests/golden/weights.py random_state_dict(model.state_dict() shapes, seed)",
        "weight_seed": seed,
        "image_seed": IMAGE_SEED,
        "images": "np.random.default_rng(100).standard_normal((2, 224, 224, 3)).astype(float32), "
                  "NHWC; torch input is images.transpose(0, 3, 1, 2)",
        "depth": depth,
        "num_tokens_in": n0,
        "margins": margins_used,
        "modes": modes,
        "pooling": ("MAE patch: (x * size)[:, 1:].sum(1) / 3 (T read before patch_embed = image channels), "
                    "then fc_norm; pooled_<tag> is that fc_norm input" if patch_name == "mae"
                    else "DeiT patch: norm, then the class token"),
        "max_abs_diff_logits_r1_vs_dense": r1_vs_dense,
        "settings": settings,
        "npz_keys": sorted(arrays),
        "adaptations": ADAPTATIONS,
        "margin_note": "min_*_margin: smallest float64 gaps behind the merge decisions per layer (see "
                       "decision_margins in the generator); near float32 noise a re-implementation may "
                       "legitimately decide otherwise.",
    })
    (out_dir / f"pitome_{key}.json").write_text(json.dumps(meta, indent=2) + "\n")
    for s in settings:
        print(f"  {s['tag']:<6} tokens {s['tokens_after_block'][-1]:>3}  max|logit| {s['max_abs_logit']:.3f}  "
              f"min energy gap {s['min_energy_margin'] or float('inf'):.1e}  "
              f"dest {s['min_destination_margin'] or float('inf'):.1e}  edge {s['min_edge_margin'] or float('inf'):.1e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pitome", required=True, type=pathlib.Path,
                        help="checkout of hchautran/PiToMe (contains algo/pitome/)")
    parser.add_argument("--out", default=REPO_ROOT / "tests" / "golden", type=pathlib.Path)
    parser.add_argument("--commit", default=None, help="official commit sha, if --pitome is not a git checkout")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--skip-unit", action="store_true")
    args = parser.parse_args(argv)

    pitome_dir = args.pitome.resolve()
    if not (pitome_dir / "algo" / "pitome" / "merge.py").is_file():
        raise SystemExit(f"{pitome_dir} does not contain algo/pitome/merge.py")
    commit, commit_from = _official_commit(pitome_dir, args.commit)

    torch_compat = _load_file_module("tokax_tests_torch_compat", REPO_ROOT / "tests" / "torch_compat.py")
    weights = _load_file_module("tokax_tests_golden_weights", REPO_ROOT / "tests" / "golden" / "weights.py")
    timm = torch_compat.import_timm()  # before the patches, which import timm
    import torch
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    official = _load_official(pitome_dir)
    provenance = {
        "official_repo": OFFICIAL_REPO,
        "official_commit": commit,
        "official_commit_from": commit_from,
        "official_files_sha256": {p: _sha256(pitome_dir / p) for p in OFFICIAL_FILES},
        "versions": _versions(timm, torch),
        "command": "python scripts/goldens/make_pitome_goldens.py --pitome <PiToMe checkout> --out tests/golden "
                   "[--commit <sha>]",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_unit:
        make_unit_goldens(official, args.out, provenance)
    for key in args.models:
        make_model_goldens(key, official, args.out, provenance, timm, weights)


if __name__ == "__main__":
    main()
