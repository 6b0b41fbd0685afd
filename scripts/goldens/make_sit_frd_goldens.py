"""Golden file for SiT's FRD loss: the OFFICIAL `DistillationLoss` (losses.py) on small random tensors.

    python scripts/goldens/make_sit_frd_goldens.py --sit /path/to/SiT/checkout --out tests/golden

`--sit` is a checkout of https://github.com/Sense-X/SiT (the directory holding losses.py), imported at
run time; no official code lives in this repo. The commit is read with `git -C <sit> rev-parse HEAD`
(pass --commit for a tree without .git).

The official loss calls `teacher_model(inputs)` itself; here the teacher is a stub module that
returns the stored teacher logits and per-layer tokens, so the golden pins the loss arithmetic
(base CE, per-layer MSE / L, tau^2 batchmean KL, the lambdas), not a model. Cases (fp64 inputs
rounded to fp32, computed by torch in fp32 and fp64):

tests/golden/sit_frd_loss.npz, per case <c>:
  <c>_student_logits (B, K), <c>_teacher_logits (B, K), <c>_labels (B,) int64,
  <c>_student_tokens (L, B, N0, C), <c>_teacher_tokens (L, B, N0, C),
  <c>_out (4,) float64 [loss, loss_cls, loss_token, loss_logits] (fp64 torch),
  <c>_out32 (4,) float32 (fp32 torch), <c>_g_student_logits, <c>_g_student_tokens: d loss / d student (fp64).
tests/golden/sit_frd_loss.json: cases with their lambda_token, lambda_logits, tau, shapes, seeds, commit.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import subprocess

import numpy as np
import torch

CASES = {
    # name: (B, K, L, N0, C, lambda_token, lambda_logits, tau, logit scale, seed)
    "defaults": (4, 10, 3, 8, 6, 2.0, 2.0, 1.0, 3.0, 0),
    "tau3": (5, 7, 2, 6, 4, 0.5, 1.5, 3.0, 5.0, 1),
}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sit", required=True)
  parser.add_argument("--out", default="tests/golden")
  parser.add_argument("--commit", default=None)
  args = parser.parse_args()
  path = os.path.join(args.sit, "losses.py")
  commit = args.commit or subprocess.check_output(["git", "-C", args.sit, "rev-parse", "HEAD"], text=True).strip()
  spec = importlib.util.spec_from_file_location("sit_losses", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)

  arrays, meta = {}, {"repository": "https://github.com/Sense-X/SiT", "commit": commit,
                      "sha256": {"losses.py": hashlib.sha256(open(path, "rb").read()).hexdigest()},
                      "torch": torch.__version__, "cases": {}}
  for name, (b, k, layers, n0, c, lam_tok, lam_log, tau, scale, seed) in CASES.items():
    rng = np.random.default_rng(seed)
    s_logits = (rng.standard_normal((b, k)) * scale).astype(np.float32)
    t_logits = (rng.standard_normal((b, k)) * scale).astype(np.float32)
    labels = rng.integers(0, k, size=b).astype(np.int64)
    s_tokens = rng.standard_normal((layers, b, n0, c)).astype(np.float32)
    t_tokens = rng.standard_normal((layers, b, n0, c)).astype(np.float32)
    outs = {}
    for dtype in (torch.float64, torch.float32):
      tl, tt = torch.tensor(t_logits, dtype=dtype), [torch.tensor(t, dtype=dtype) for t in t_tokens]

      class Teacher(torch.nn.Module):
        def forward(self, inputs):
          del inputs
          return tl, tt

      loss_fn = module.DistillationLoss(torch.nn.CrossEntropyLoss(), Teacher(), None, "frd", lam_tok, lam_log,
                                        1.0, tau)
      sl = torch.tensor(s_logits, dtype=dtype, requires_grad=True)
      st = torch.tensor(s_tokens, dtype=dtype, requires_grad=True)
      loss, loss_cls, loss_token, loss_logits, _ = loss_fn(torch.zeros(1), (sl, sl, list(st.unbind(0))),
                                                          torch.tensor(labels))
      loss.backward()
      outs[dtype] = (np.array([float(v) for v in (loss, loss_cls, loss_token, loss_logits)]),
                     sl.grad.numpy().copy(), st.grad.numpy().copy())
    arrays.update({f"{name}_student_logits": s_logits, f"{name}_teacher_logits": t_logits, f"{name}_labels": labels,
                   f"{name}_student_tokens": s_tokens, f"{name}_teacher_tokens": t_tokens,
                   f"{name}_out": outs[torch.float64][0], f"{name}_out32": outs[torch.float32][0].astype(np.float32),
                   f"{name}_g_student_logits": outs[torch.float64][1],
                   f"{name}_g_student_tokens": outs[torch.float64][2]})
    meta["cases"][name] = dict(batch=b, classes=k, layers=layers, tokens=n0, width=c, lambda_token=lam_tok,
                               lambda_logits=lam_log, tau=tau, logit_scale=scale, seed=seed)
  np.savez_compressed(os.path.join(args.out, "sit_frd_loss.npz"), **arrays)
  with open(os.path.join(args.out, "sit_frd_loss.json"), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)


if __name__ == "__main__":
  main()
