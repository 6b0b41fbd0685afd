r"""MCTF token-reduction consistency on cluttered digits: fine-tune a dense ViT to fuse tokens.

The student runs MCTF (r=24 on blocks 1-3 of the cluttered_digits_vit model: 197 -> 173 -> 149 ->
125 tokens); every step a teacher branch (same weights) runs one schedule drawn uniformly from
consistency.teacher_r (0 = dense), picked by lax.switch inside the one compiled step. Loss (mlvlab/
MCTF engine.py): 1.0 CE(student) + 1.0 CE(teacher) + 3.0 mean over confident samples (student
p(y) > 0.4) of MSE(final class token of the student, detached teacher's). The official training
draws r_teacher from range(r_teacher_max) (8 values); here teacher_r lists the compiled set.
Weights start from init_from (the dense run).

  python -m tokax.train --config configs/cluttered_digits_vit.py --workdir /tmp/cd_vit
  python -m tokax.train --config configs/cluttered_digits_mctf.py --workdir /tmp/cd_mctf \
      --config.init_from.workdir=/tmp/cd_vit
  # runlocal (one block), starting from this file's `dense` mode:
  python -m tokax.train --config configs/cluttered_digits_mctf.py:dense,runlocal --workdir /tmp/mctf_t
  python -m tokax.train --config configs/cluttered_digits_mctf.py:runlocal --workdir /tmp/mctf_s \
      --config.init_from.workdir=/tmp/mctf_t

GPU mode (`:gpu`, scripts/device/cluttered_digits_evidence.sh): starts from cluttered_digits_vit.py:gpu
(ViT-S/8, 12 blocks); r=8 on every block (197 -> 101 tokens, MCTF's DeiT-S recipe scaled to 197 tokens),
teacher_r (0, 2, 4, 6) (the official U{0..r-1} in steps of 2), 600 steps of batch 128 (about 1.5 min on an
H100 beside the SiT and DeiT fine-tunes).

  python -m tokax.train --config configs/cluttered_digits_vit.py:gpu --workdir /tmp/cd_vit_gpu
  python -m tokax.train --config configs/cluttered_digits_mctf.py:gpu --workdir /tmp/cd_mctf_gpu \
      --config.init_from.workdir=/tmp/cd_vit_gpu

Arguments (`:key=value,flag`): runlocal, gpu, dense (the starting point's config, no MCTF).
"""
import os

import ml_collections

from tokax.train.config_utils import load_config_file, parse_arg

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluttered_digits_vit.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, gpu=False, dense=False)
  flags = ",".join(name for name in ("gpu", "runlocal") if arg[name])
  config = load_config_file(BASE + (f":{flags}" if flags else ""))
  if arg.dense:
    return config
  if arg.runlocal:
    reduction = dict(name="mctf", r=2, activate_layers=(0,))
    teacher_r = (0, 1)
  elif arg.gpu:
    depth = config.model.depth
    reduction = dict(name="mctf", r=8, activate_layers=tuple(range(depth)))
    teacher_r = (0, 2, 4, 6)
    config.total_steps = 600
    config.warmup_steps = 40
    config.lr = 3e-5  # MCTF: lr_times 0.03 of the base recipe's (1e-3)
  else:
    reduction = dict(name="mctf", r=24, activate_layers=(1, 2, 3))
    teacher_r = (0, 4, 8, 12)
    config.total_steps = 600
    config.warmup_steps = 30
    config.lr = 1.5e-5  # MCTF: lr_times 0.03 of the base recipe's
  del config.reduction  # the base's string "none": a dict instead, so --config.reduction.r=... overrides a field
  config.reduction = reduction
  config.consistency = dict(teacher_r=teacher_r, weights=(1.0, 1.0, 3.0), threshold=0.4)
  config.init_from = dict(workdir="")  # the dense run (its config.json describes it)
  return config
