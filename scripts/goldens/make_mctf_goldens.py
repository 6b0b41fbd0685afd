"""Golden files for MCTF parity: the OFFICIAL mlvlab/MCTF code on random weights and inputs.

    python scripts/goldens/make_mctf_goldens.py --mctf /path/to/MCTF/checkout --out tests/golden

`--mctf` is a checkout of https://github.com/mlvlab/MCTF (the directory holding models/ and
utils/). It is imported from there at run time; no official code lives in this repo. The commit is
read with `git -C <mctf> rev-parse HEAD`; for an exported tree without .git pass `--commit <sha>`
(the committed goldens used 2004da0cad3231fa74cbd60b6042b0bd133aacde).

Writes two files, each with a .json of provenance, versions and decision margins:

tests/golden/mctf_deit_tiny_patch16_224.npz: the official DeiT (models/deit.py `deit_tiny`, its own
VisionTransformer with Block_DEIT + MHSA, timm parameter names), eval, fp32, CPU, weights from
tests/golden/weights.py (seed 0) drawn from the official model's state-dict shapes (the same names
and shapes as timm's deit_tiny_patch16_224, asserted), images from seed 100:

  images          (2, 224, 224, 3) float32 NHWC (torch gets the NCHW transpose)
  logits_dense    (2, 1000) use_mctf=False
  logits_<tag>    (2, 1000) model(x, r_eval=mctf_type[0])
  tokens_<tag>    (12,) int32 token count after each block
  source_<tag>    (2, N_final, 197) float32 0/1 info["student_source"] (trace_source=1)

  tags (mctf_type = [r, 0, trace_source=1, prop_attn, 1, tau_sim, tau_info, tau_size, bidirection,
  pooling_type, 0] and --activate_layer):
    mctf16         [16,0,1,1,1,1,20,40,1,1,0]   layers 1..11   (released MCTF, trace_source on)
    fast035        [0.35,0,1,1,1,1,20,40,1,1,0] layers 3,6,9   (released MCTF-Fast)
    mctf16_pool0   pooling_type 0               layers 1..11
    mctf16_unidir  bidirection 0                layers 1..11
    mctf16_noprop  prop_attn 0                  layers 1..11
    r100_all       r = 100 (clipped)            layers 0..11

tests/golden/mctf_unit.npz: the official utils/mctf.py `mctf(x, attn, info, "student_")` (r rule,
bipartite_soft_matching, merge_source, merge_wavg with one_step_ahead=1) on random inputs:

  in_x_n<N>       (2, N, 48) float32 block input (residual stream), N in 51, 50, 12
  in_attn_n<N>    (2, 4, N, N) float32 softmax of 1.5 * normal logits
  in_size_n<N>    (2, N) float32 integer sizes in 1..6 ([CLS] 1)
  <case>_x        (2, N', 48) fused tokens          <case>_size (2, N') fused sizes
  <case>_attn     (2, 4, N', N') merged attention   <case>_source (2, N', N) 0/1 groups
  (see CASES below; the json lists each case's settings, applied r and margins)

Adaptations at the edges: none to the official behaviour. models/deit.py imports timm's deprecated
module paths (timm.models.helpers/layers/registry), which timm 1.0.31 still provides (warnings
only), and re-registers deit_tiny/small/base in timm's registry (never used here). For the margins
in the json, utils.mctf.bipartite_soft_matching is wrapped by a recorder that copies its inputs and
calls the original unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL_REPO = "https://github.com/mlvlab/MCTF"
OFFICIAL_FILES = ("utils/mctf.py", "models/deit.py", "models/modules/blocks.py", "models/SA/MHSA.py")
IMAGE_SEED = 100
IMAGE_SHAPE = (2, 224, 224, 3)
WEIGHT_SEED = 0
MODEL = "deit_tiny_patch16_224"
ALL_BUT_FIRST = list(range(1, 12))
# tag -> (mctf_type, activate_layer)
SETTINGS = {
    "mctf16": ([16, 0, 1, 1, 1, 1, 20, 40, 1, 1, 0], ALL_BUT_FIRST),
    "fast035": ([0.35, 0, 1, 1, 1, 1, 20, 40, 1, 1, 0], [3, 6, 9]),
    "mctf16_pool0": ([16, 0, 1, 1, 1, 1, 20, 40, 1, 0, 0], ALL_BUT_FIRST),
    "mctf16_unidir": ([16, 0, 1, 1, 1, 1, 20, 40, 0, 1, 0], ALL_BUT_FIRST),
    "mctf16_noprop": ([16, 0, 1, 0, 1, 1, 20, 40, 1, 1, 0], ALL_BUT_FIRST),
    "r100_all": ([100, 0, 1, 1, 1, 1, 20, 40, 1, 1, 0], list(range(12))),
}
UNIT_SEED = 7
UNIT_C, UNIT_H = 48, 4
UNIT_NS = (51, 50, 12)
RELEASED_TAUS = (1, 20, 40)
# case -> (N, r, num_protected, (tau_sim, tau_info, tau_size), bidirection, pooling_type, sizes given)
CASES = {
    "base": (51, 10, 1, RELEASED_TAUS, 1, 1, True),
    "base_even": (50, 10, 1, RELEASED_TAUS, 1, 1, True),
    "first": (51, 10, 1, RELEASED_TAUS, 1, 1, False),
    "pool0": (51, 10, 1, RELEASED_TAUS, 1, 0, True),
    "unidir": (51, 10, 1, RELEASED_TAUS, 0, 1, True),
    "unidir_pool0": (51, 10, 1, RELEASED_TAUS, 0, 0, True),
    "odd_r": (51, 11, 1, RELEASED_TAUS, 1, 1, True),
    "frac": (51, 0.35, 1, RELEASED_TAUS, 1, 1, True),
    "clip": (51, 100, 1, RELEASED_TAUS, 1, 1, True),
    "small": (12, 16, 1, RELEASED_TAUS, 1, 1, True),
    "sim_only": (51, 10, 1, (2, 0, 0), 1, 1, True),
    "no_sim": (51, 10, 1, (0, 20, 40), 1, 1, True),
    "no_protect": (50, 10, 0, RELEASED_TAUS, 1, 1, True),
    "no_protect_odd": (51, 9, 0, RELEASED_TAUS, 1, 0, True),
    "dist_official": (51, 20, 2, RELEASED_TAUS, 1, 1, False),  # official P=2 indexing (see json)
}


def _load_file_module(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _official_commit(mctf_dir: pathlib.Path, commit_arg: str | None) -> tuple[str, str]:
    try:
        top, sha = subprocess.run(
            ["git", "-C", str(mctf_dir), "rev-parse", "--show-toplevel", "HEAD"], check=True,
            capture_output=True, text=True).stdout.split()
        if pathlib.Path(top).resolve() != mctf_dir:
            raise subprocess.CalledProcessError(1, "git")
        if commit_arg and commit_arg != sha:
            raise SystemExit(f"--commit {commit_arg} disagrees with {mctf_dir} HEAD {sha}")
        return sha, "git rev-parse HEAD of --mctf"
    except (subprocess.CalledProcessError, FileNotFoundError):
        if not commit_arg:
            raise SystemExit(f"{mctf_dir} is not a git checkout: pass --commit <sha>")
        return commit_arg, "--commit argument (the --mctf tree has no .git)"


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------------------------
# Decision margins (own float64 diagnostic, not official code): how far each fusion decision is
# from flipping. A margin near float32 noise (~1e-7 of scores in [0, 1]) means a correct
# re-implementation may legitimately pick the other token.

def _scores64(metric, attn, size, taus, num_protected):
    tau_sim, tau_info, tau_size = taus
    m = metric.astype(np.float64)
    m = m / np.linalg.norm(m, axis=-1, keepdims=True)
    a, b = m[:, 0::2], m[:, 1::2]
    scores = np.ones((m.shape[0], a.shape[1], b.shape[1]))
    if tau_sim:
        scores = scores * ((a @ np.swapaxes(b, 1, 2) + 1) / 2) ** (1 / tau_sim)
    if tau_info > 0 and attn is not None:
        info = 1 / attn.astype(np.float64).mean(axis=(1, 2))
        info = info / info.max(1, keepdims=True)
        scores = scores * (info[:, 0::2, None] * info[:, None, 1::2]) ** (1 / tau_info)
    if tau_size and size is not None:
        s = 1 / size.astype(np.float64)
        s = s / s.max(1, keepdims=True)
        scores = scores * (s[:, 0::2, None] * s[:, None, 1::2]) ** (1 / tau_size)
    if num_protected:
        scores[:, :num_protected, :] = -np.inf
    return scores


def _gap(sorted_desc, k):
    if k <= 0 or sorted_desc.shape[-1] <= k:
        return None
    gap = sorted_desc[..., k - 1] - sorted_desc[..., k]
    return float(np.min(gap)) if np.all(np.isfinite(gap)) else None


def _dest_gap(rows, chosen):
    """best - second best over the columns, for the chosen rows; min over everything."""
    if chosen.shape[-1] == 0 or rows.shape[-1] < 2:
        return None
    top2 = -np.sort(-rows, axis=-1)[..., :2]
    picked = np.take_along_axis(top2, chosen[..., None], axis=1)
    return float(np.min(picked[..., 0] - picked[..., 1]))


def _margins(metric, attn, size, r, num_protected, taus, bidirection):
    r1, r2 = (r // 2, r - r // 2) if bidirection else (r, 0)
    scores = _scores64(metric, attn, size, taus, num_protected)
    node_max = scores.max(-1)
    order = np.argsort(-node_max, axis=-1, kind="stable")
    out = {"step1_boundary": _gap(-np.sort(-node_max, axis=-1), r1),
           "step1_destination": _dest_gap(scores, order[:, :r1])}
    if bidirection:
        kept = order[:, r1:]
        if num_protected:
            kept = np.sort(kept, axis=-1)
        s2 = np.swapaxes(np.take_along_axis(scores, kept[..., None], axis=1), 1, 2)
        node_max2 = s2.max(-1)
        order2 = np.argsort(-node_max2, axis=-1, kind="stable")
        out["step2_boundary"] = _gap(-np.sort(-node_max2, axis=-1), r2)
        out["step2_destination"] = _dest_gap(s2, order2[:, :r2])
    return out


def _min_margin(per_layer):
    values = [v for m in per_layer if m for v in m.values() if v is not None]
    return min(values) if values else None


# ----------------------------------------------------------------------------------------------

def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def make_unit_goldens(official, out_dir, meta_common):
    import torch

    rng = np.random.default_rng(UNIT_SEED)
    arrays, inputs = {}, {}
    for n in UNIT_NS:
        x = rng.standard_normal((2, n, UNIT_C)).astype(np.float32)
        attn = _softmax(1.5 * rng.standard_normal((2, UNIT_H, n, n))).astype(np.float32)
        size = rng.integers(1, 7, size=(2, n)).astype(np.float32)
        size[:, 0] = 1.0
        inputs[n] = (x, attn, size)
        arrays[f"in_x_n{n}"], arrays[f"in_attn_n{n}"], arrays[f"in_size_n{n}"] = x, attn, size

    cases_meta = []
    for tag, (n, r, protected, taus, bidirection, pooling, sized) in CASES.items():
        x, attn, size = inputs[n]
        size_t = torch.from_numpy(size[..., None].copy()) if sized else None
        info = {
            "num_protected": protected, "r_eval": r, "tau_sim": taus[0], "tau_info": taus[1],
            "tau_size": taus[2], "bidirection": bidirection, "trace_source": 1,
            "one_step_ahead": 1, "pooling_type": pooling,
            "student_size": size_t, "student_source": None,
        }
        with torch.no_grad():
            x_out, attn_out = official.mctf(torch.from_numpy(x.copy()), torch.from_numpy(attn.copy()),
                                            info, "student_", train=False)
        r_applied = n - x_out.shape[1]
        assert r_applied > 0, tag
        arrays[f"{tag}_x"] = x_out.numpy().astype(np.float32)
        arrays[f"{tag}_size"] = info["student_size"].numpy()[..., 0].astype(np.float32)
        arrays[f"{tag}_attn"] = attn_out.numpy().astype(np.float32)
        source = info["student_source"].numpy().astype(np.float32)
        arrays[f"{tag}_source"] = source
        assert np.all(source.sum(1) == 1.0), tag
        base_size = size if sized else np.ones_like(size)
        np.testing.assert_allclose(source @ base_size[..., None], arrays[f"{tag}_size"][..., None])
        margins = _margins(x, attn, size if sized else None, r_applied, protected, taus, bidirection)
        entry = {"tag": tag, "num_tokens": n, "r": r, "r_applied": r_applied,
                 "num_protected": protected, "tau_sim": taus[0], "tau_info": taus[1], "tau_size": taus[2],
                 "bidirection": bidirection, "pooling_type": pooling, "sizes_given": sized,
                 "margins": margins}
        if tag == "dist_official":
            # token 1 (the would-be distillation token) is B[0]: not protected by scores[:, :2, :].
            row_of_token = source.argmax(1)  # (B, N) output row holding each input token
            group = source.sum(-1)  # (B, N') inputs per output row
            entry["dist_token_group_size"] = group[np.arange(2), row_of_token[:, 1]].tolist()
            entry["dist_token_output_row"] = row_of_token[:, 1].tolist()
            entry["token2_output_row"] = row_of_token[:, 2].tolist()
            entry["note"] = ("official num_protected=2 sets scores[:, :2, :] = -inf, i.e. A rows 0 and 1 = "
                             "tokens 0 and 2; token 1 (B[0], a DeiT distillation token) is fused.")
            assert max(entry["dist_token_group_size"]) > 1, "pick a case where the official code fuses token 1"
        cases_meta.append(entry)

    npz_path = out_dir / "mctf_unit.npz"
    np.savez_compressed(npz_path, **arrays)
    meta = dict(meta_common, **{
        "what": "official utils/mctf.py mctf(x, attn, info, 'student_', train=False) with info as listed",
        "unit_seed": UNIT_SEED,
        "inputs": "rng = np.random.default_rng(7); for N in (51, 50, 12): x = rng.standard_normal((2, N, 48)); "
                  "attn = softmax(1.5 * rng.standard_normal((2, 4, N, N))); size = rng.integers(1, 7, (2, N)), "
                  "size[:, 0] = 1 (all float32; softmax in float64 numpy)",
        "cases": cases_meta,
        "min_margin": _min_margin([c["margins"] for c in cases_meta]),
        "npz_keys": sorted(arrays),
        "command": "python scripts/goldens/make_mctf_goldens.py --mctf <MCTF checkout> --out tests/golden "
                   "[--commit <sha>]",
    })
    (out_dir / "mctf_unit.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"  unit: {len(CASES)} cases, min margin {meta['min_margin']:.2e}, wrote {npz_path}")


def _build(deit, mctf_type, activate, use_mctf, state):
    import torch
    model = deit.deit_tiny(use_mctf=use_mctf, mctf_type=list(mctf_type), task_type=[1, 0, 0, 0],
                           activate_layer=list(activate))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return model.eval()


def make_model_goldens(official, deit, timm, weights, out_dir, meta_common):
    import torch

    probe = deit.deit_tiny(use_mctf=False, mctf_type=SETTINGS["mctf16"][0], task_type=[1, 0, 0, 0],
                           activate_layer=ALL_BUT_FIRST)
    shapes = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    timm_model = timm.create_model(MODEL, pretrained=False).eval()
    timm_shapes = {k: tuple(v.shape) for k, v in timm_model.state_dict().items()}
    assert shapes == timm_shapes, "official DeiT-T names/shapes differ from timm's deit_tiny_patch16_224"
    state = weights.random_state_dict(shapes, WEIGHT_SEED)
    timm_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)

    images = np.random.default_rng(IMAGE_SEED).standard_normal(IMAGE_SHAPE).astype(np.float32)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    arrays = {"images": images}
    dense = _build(deit, SETTINGS["mctf16"][0], ALL_BUT_FIRST, False, state)
    with torch.no_grad():
        arrays["logits_dense"] = dense(x, r_eval=None).numpy().astype(np.float32)
        timm_logits = timm_model(x).numpy()
    dense_vs_timm = float(np.abs(arrays["logits_dense"] - timm_logits).max())
    assert dense_vs_timm < 1e-4, dense_vs_timm

    recorded = []
    original = official.bipartite_soft_matching

    def recorder(metric, attn, size, r, num_protected, tau_sim, tau_info, tau_size, bidirection):
        recorded.append((metric.detach().numpy().copy(), None if attn is None else attn.detach().numpy().copy(),
                         None if size is None else size.detach().numpy()[..., 0].copy(),
                         r, num_protected, (tau_sim, tau_info, tau_size), bidirection))
        return original(metric=metric, attn=attn, size=size, r=r, num_protected=num_protected, tau_sim=tau_sim,
                        tau_info=tau_info, tau_size=tau_size, bidirection=bidirection)

    official.bipartite_soft_matching = recorder
    settings_meta = []
    try:
        for tag, (mctf_type, activate) in SETTINGS.items():
            model = _build(deit, mctf_type, activate, True, state)
            counts = []
            for blk in model.blocks:
                blk.register_forward_hook(lambda mod, inp, out: counts.append(int(out.shape[1])))
            recorded.clear()
            with torch.no_grad():
                logits = model(x, r_eval=mctf_type[0]).numpy().astype(np.float32)
            assert np.all(np.isfinite(logits)) and len(counts) == 12, tag
            source = model.info["student_source"].numpy().astype(np.float32)
            assert source.shape == (2, counts[-1], 197), (tag, source.shape)
            assert np.all(source.sum(1) == 1.0), tag
            size = model.info["student_size"].numpy()[..., 0]
            assert np.array_equal(source.sum(-1), size), tag
            arrays[f"logits_{tag}"] = logits
            arrays[f"tokens_{tag}"] = np.asarray(counts, np.int32)
            arrays[f"source_{tag}"] = source
            n_in = [197] + counts[:-1]
            margins = [_margins(m, a, s, r, p, t, b) for m, a, s, r, p, t, b in recorded]
            settings_meta.append({
                "tag": tag, "mctf_type": mctf_type, "activate_layer": activate, "r_eval": mctf_type[0],
                "tokens_after_block": counts, "r_per_layer_applied": [n_in[i] - counts[i] for i in range(12)],
                "min_margin": _min_margin(margins), "margins_per_fusion": margins,
                "max_abs_logit": float(np.abs(logits).max()),
            })
    finally:
        official.bipartite_soft_matching = original

    npz_path = out_dir / f"mctf_{MODEL}.npz"
    np.savez_compressed(npz_path, **arrays)
    meta = dict(meta_common, **{
        "model": MODEL,
        "model_call": "models/deit.py deit_tiny(use_mctf=..., mctf_type=..., task_type=[1,0,0,0], "
                      "activate_layer=...).eval(); model(x, r_eval=mctf_type[0]) (as main.py --eval --r_evals)",
        "weights": "tests/golden/weights.py random_state_dict(official model state_dict shapes, seed); "
                   "identical names and shapes to timm deit_tiny_patch16_224 (asserted)",
        "weight_seed": WEIGHT_SEED,
        "image_seed": IMAGE_SEED,
        "images": "np.random.default_rng(100).standard_normal((2, 224, 224, 3)).astype(float32), NHWC; "
                  "torch input is images.transpose(0, 3, 1, 2)",
        "max_abs_diff_dense_vs_timm": dense_vs_timm,
        "settings": settings_meta,
        "npz_keys": sorted(arrays),
        "command": "python scripts/goldens/make_mctf_goldens.py --mctf <MCTF checkout> --out tests/golden "
                   "[--commit <sha>]",
    })
    (out_dir / f"mctf_{MODEL}.json").write_text(json.dumps(meta, indent=2) + "\n")
    for s in settings_meta:
        print(f"  {s['tag']:<14} tokens {s['tokens_after_block']}  min margin {s['min_margin']:.2e}")
    print(f"  wrote {npz_path} ({os.path.getsize(npz_path) / 1e6:.2f} MB)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mctf", required=True, type=pathlib.Path, help="checkout of mlvlab/MCTF")
    parser.add_argument("--out", default=REPO_ROOT / "tests" / "golden", type=pathlib.Path)
    parser.add_argument("--commit", default=None, help="official commit sha, if --mctf is not a git checkout")
    args = parser.parse_args(argv)

    mctf_dir = args.mctf.resolve()
    for path in OFFICIAL_FILES:
        if not (mctf_dir / path).is_file():
            raise SystemExit(f"{mctf_dir} does not contain {path}")
    commit, commit_from = _official_commit(mctf_dir, args.commit)

    torch_compat = _load_file_module("tokax_tests_torch_compat", REPO_ROOT / "tests" / "torch_compat.py")
    weights = _load_file_module("tokax_tests_golden_weights", REPO_ROOT / "tests" / "golden" / "weights.py")
    timm = torch_compat.import_timm()  # before the official code, which imports timm
    import torch
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    sys.path.insert(0, str(mctf_dir))
    official = importlib.import_module("utils.mctf")
    deit = importlib.import_module("models.deit")
    assert pathlib.Path(official.__file__).resolve().is_relative_to(mctf_dir), official.__file__

    meta_common = {
        "official_repo": OFFICIAL_REPO,
        "official_commit": commit,
        "official_commit_from": commit_from,
        "official_files_sha256": {p: _sha256(mctf_dir / p) for p in OFFICIAL_FILES},
        "versions": {"timm": timm.__version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "adaptations": [
            "none to the official behaviour: models/deit.py runs unchanged on timm "
            f"{timm.__version__} (deprecated timm.models.helpers/layers/registry imports still resolve).",
            "observation only: utils.mctf.bipartite_soft_matching is wrapped by a recorder that copies "
            "its inputs (for the margins) and calls the original with the same arguments.",
        ],
        "margin_note": "margins: float64 recomputation of the score gaps behind each decision (step1/step2 "
                       "boundary: last fused vs first kept; destination: best vs second-best partner), min "
                       "over the batch. Near float32 noise (~1e-7) a re-implementation may flip a decision.",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    make_unit_goldens(official, args.out, meta_common)
    make_model_goldens(official, deit, timm, weights, args.out, meta_common)


if __name__ == "__main__":
    main()
