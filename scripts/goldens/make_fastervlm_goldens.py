"""Golden file for FasterVLM parity: the OFFICIAL Theia-4869/FasterVLM selection on random inputs.

    python scripts/goldens/make_fastervlm_goldens.py --fastervlm /path/to/FasterVLM/checkout --out tests/golden

`--fastervlm` is a checkout of https://github.com/Theia-4869/FasterVLM (the directory holding
llava/). Its code is imported from there at run time; none lives in this repo. The commit is read
with git, or given with `--commit` (the committed golden used f5d5f12037e105a51865ecb4b28a73cd86eb4921).

What runs is the official code path from the vision tower's outputs to the kept tokens:
`CLIPVisionTower.forward` (vision tower called with output_attentions / output_hidden_states, then
`.to(images.dtype)`), `CLIPVisionTower.feature_select` (select_layer -2, select_feature "patch":
drop [CLS] from the features and take the [CLS] query row of the same layer's attention) and
`LlavaMetaForCausalLM.encode_images` (head mean, torch.topk, boolean index mask, mm_projector);
then `image_feature[index_mask]` per image, the three lines of prepare_inputs_labels_for_multimodal
for a plain (non-AnyRes) image batch, written out here.

Adaptations at the edges (listed in the json): the CLIP model is replaced by a stub module that
returns random hidden states (B, 577, 32) and random softmax attention (B, 16, 577, 577) for each
of 3 layers (the selection only reads layer -2); `transformers` is not needed by the selection and
not installed here, so a stub `transformers` module (CLIPVisionModel, CLIPImageProcessor,
CLIPVisionConfig, StoppingCriteria as placeholders) is put in sys.modules before importing
llava.model.llava_arch; the projector is the identity (it acts per token, so it commutes with the
selection).

tests/golden/fastervlm_selection.npz (B = 2, N = 577 = 1 + 24 * 24, H = 16, C = 32):

  features            (B, N, C) float32 hidden_states[-2] incl. [CLS] (the vision tower's output)
  attn_cls            (B, H, N) float32 attentions[-2][:, :, 0, :], the [CLS] query row
  <dt>_score          (B, N - 1) the official head mean (as float32; dt = fp32 or fp16)
  <dt>_t<T>_indices   (B, T) int32 torch.topk indices into the patch tokens (descending score)
  <dt>_t<T>_mask      (B, N - 1) bool official index mask
  <dt>_t<T>_selected  (B, T, C) float32 kept features, original order
  attn_cls_fp16       (B, H, N) the fp16 attention row as float32 (fp16 run: vision tower outputs and
                      images in float16, as LLaVA runs; its head mean is fp16 and has ties)

T in (576, 144, 64, 58, 29, 1) for fp32 and (144, 58, 29) for fp16.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import pathlib
import platform
import subprocess
import sys
import types

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
OFFICIAL_REPO = "https://github.com/Theia-4869/FasterVLM"
SEED = 7
BATCH, GRID, HEADS, WIDTH, LAYERS = 2, 24, 16, 32, 3
KEEP_FP32 = (576, 144, 64, 58, 29, 1)
KEEP_FP16 = (144, 58, 29)
ADAPTATIONS = [
    "CLIPVisionModel replaced by a stub nn.Module returning random hidden_states (LAYERS + 1 of (B, N, C)) "
    "and attentions (LAYERS of (B, H, N, N), softmax of 2.5 * standard normal logits) with dtype/device "
    "attributes; CLIPVisionTower is built with nn.Module.__init__ and select_layer=-2, "
    "select_feature='patch' (its __init__ would download CLIP).",
    "a stub `transformers` module (CLIPVisionModel, CLIPImageProcessor, CLIPVisionConfig, StoppingCriteria "
    "placeholders) in sys.modules: llava imports these names at module level; the selection never uses them.",
    "mm_projector = nn.Identity(); LLaVA's projector is per-token, so it commutes with the selection.",
    "prepare_inputs_labels_for_multimodal's non-AnyRes branch (image_feature[index_mask] per image, "
    "llava_arch.py L243-247) is written out in the generator; the rest of that function builds LLM inputs.",
]


def _official_commit(src: pathlib.Path, commit_arg: str | None) -> tuple[str, str]:
    try:
        top, sha = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--show-toplevel", "HEAD"], check=True,
            capture_output=True, text=True).stdout.split()
        if pathlib.Path(top).resolve() != src:
            raise subprocess.CalledProcessError(1, "git")
        if commit_arg and commit_arg != sha:
            raise SystemExit(f"--commit {commit_arg} disagrees with {src} HEAD {sha}")
        return sha, "git rev-parse HEAD of --fastervlm"
    except (subprocess.CalledProcessError, FileNotFoundError):
        if not commit_arg:
            raise SystemExit(f"{src} is not a git checkout: pass --commit <sha>")
        return commit_arg, "--commit argument (the --fastervlm tree has no .git)"


def _install_transformers_stub():
    if "transformers" in sys.modules:
        return
    stub = types.ModuleType("transformers")
    for name in ("CLIPVisionModel", "CLIPImageProcessor", "CLIPVisionConfig", "StoppingCriteria"):
        setattr(stub, name, type(name, (), {}))
    sys.modules["transformers"] = stub


def _random_tower_outputs(rng, dtype):
    n = 1 + GRID * GRID
    hidden = [rng.standard_normal((BATCH, n, WIDTH)).astype(np.float32) for _ in range(LAYERS + 1)]
    attentions = []
    for _ in range(LAYERS):
        logits = 2.5 * rng.standard_normal((BATCH, HEADS, n, n))
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        attentions.append((probs / probs.sum(-1, keepdims=True)).astype(np.float32))
    return hidden, attentions


def _boundary_margin(score: np.ndarray, k: int):
    s = -np.sort(-score.astype(np.float64), axis=-1)
    return float(np.min(s[:, k - 1] - s[:, k])) if k < s.shape[1] else None


def run_official(clip_encoder, llava_arch, hidden, attentions, keep: int, dtype):
    import torch
    import torch.nn as nn

    class StubCLIP(nn.Module):
        def __init__(self):
            super().__init__()
            self.dtype, self.device = dtype, torch.device("cpu")

        def forward(self, images, output_attentions=False, output_hidden_states=False):
            assert output_attentions and output_hidden_states
            return types.SimpleNamespace(
                hidden_states=tuple(torch.from_numpy(h).to(dtype) for h in hidden),
                attentions=tuple(torch.from_numpy(a).to(dtype) for a in attentions))

    tower = clip_encoder.CLIPVisionTower.__new__(clip_encoder.CLIPVisionTower)
    nn.Module.__init__(tower)
    tower.is_loaded = True
    tower.select_layer, tower.select_feature = -2, "patch"
    tower.vision_tower = StubCLIP()

    class Model:
        mm_projector = nn.Identity()

        def get_vision_tower(self):
            return tower

    class Llava(llava_arch.LlavaMetaForCausalLM):
        def get_model(self):
            return Model()

        def get_visual_token_num(self):
            return keep

    images = torch.zeros((BATCH, 3, 8, 8), dtype=dtype)  # the stub ignores pixels; dtype drives .to()
    with torch.no_grad():
        features, masks, scores = Llava().encode_images(images)
        indices = torch.topk(scores, k=keep, dim=1)[1]  # what encode_images computed, for the record
        selected = torch.stack([f[m] for f, m in zip(features, masks)], dim=0)  # llava_arch.py L243-247
    return (scores.float().numpy(), indices.numpy().astype(np.int32), masks.numpy(),
            selected.float().numpy())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fastervlm", required=True, type=pathlib.Path, help="checkout of Theia-4869/FasterVLM")
    parser.add_argument("--out", default=REPO_ROOT / "tests" / "golden", type=pathlib.Path)
    parser.add_argument("--commit", default=None, help="official commit sha, if the checkout has no .git")
    args = parser.parse_args(argv)

    src = args.fastervlm.resolve()
    files = ("llava/model/llava_arch.py", "llava/model/multimodal_encoder/clip_encoder.py")
    if not all((src / f).is_file() for f in files):
        raise SystemExit(f"{src} does not contain {files}")
    commit, commit_from = _official_commit(src, args.commit)

    import torch
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    _install_transformers_stub()
    sys.path.insert(0, str(src))
    clip_encoder = importlib.import_module("llava.model.multimodal_encoder.clip_encoder")
    llava_arch = importlib.import_module("llava.model.llava_arch")

    rng = np.random.default_rng(SEED)
    hidden, attentions = _random_tower_outputs(rng, np.float32)
    arrays = {"features": hidden[-2], "attn_cls": attentions[-2][:, :, 0, :].copy(),
              "attn_cls_fp16": attentions[-2][:, :, 0, :].astype(np.float16).astype(np.float32)}
    cases = []
    for tag, dtype, keeps in (("fp32", torch.float32, KEEP_FP32), ("fp16", torch.float16, KEEP_FP16)):
        for keep in keeps:
            score, indices, mask, selected = run_official(clip_encoder, llava_arch, hidden, attentions, keep, dtype)
            arrays[f"{tag}_score"] = score
            arrays[f"{tag}_t{keep}_indices"] = indices
            arrays[f"{tag}_t{keep}_mask"] = mask
            arrays[f"{tag}_t{keep}_selected"] = selected
            assert selected.shape == (BATCH, keep, WIDTH) and mask.sum() == BATCH * keep
            ties = int(sum(len(np.unique(s)) != len(s) for s in score)) if tag == "fp16" else 0
            cases.append({"tag": f"{tag}_t{keep}", "keep": keep, "boundary_margin": _boundary_margin(score, keep),
                          "images_with_tied_scores": ties})
            print(f"  {tag} T={keep:<3} boundary margin {cases[-1]['boundary_margin']}")

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "fastervlm_selection.npz", **arrays)
    meta = {
        "official_repo": OFFICIAL_REPO,
        "official_commit": commit,
        "official_commit_from": commit_from,
        "official_files_sha256": {f: hashlib.sha256((src / f).read_bytes()).hexdigest() for f in files},
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "seed": SEED,
        "shapes": {"batch": BATCH, "grid": GRID, "heads": HEADS, "width": WIDTH, "layers": LAYERS},
        "inputs": "rng = default_rng(seed); hidden = LAYERS + 1 x standard_normal((B, N, C)); attentions = LAYERS x "
                  "softmax(2.5 * standard_normal((B, H, N, N))) computed in float64, stored float32",
        "cases": cases,
        "adaptations": ADAPTATIONS,
        "npz_keys": sorted(arrays),
        "command": "python scripts/goldens/make_fastervlm_goldens.py --fastervlm <FasterVLM checkout> "
                   "--out tests/golden [--commit <sha>]",
    }
    (args.out / "fastervlm_selection.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"  wrote {args.out / 'fastervlm_selection.npz'}")


if __name__ == "__main__":
    main()
