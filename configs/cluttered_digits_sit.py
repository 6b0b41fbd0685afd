r"""SiT on cluttered digits: token slimming fine-tuned from a dense teacher with the FRD loss.

The student is the cluttered_digits_vit model with SiT's Token Slimming Modules at the stage ends
(stage_blocks (1, 1, 1, 1): 196 -> 98 -> 49 -> 24 patch tokens after blocks 0, 1, 2), initialised
from the teacher (official --finetune); the reverse modules (ReverseSlim) exist only in the train
state's "reverse" collection. Loss (Sense-X/SiT losses.py, "frd"): CE + 2.0 * mean over blocks of
MSE(recovered tokens, teacher tokens) + 2.0 * tau^2 KL(teacher || student), tau = 1.

  python -m tokax.train --config configs/cluttered_digits_vit.py --workdir /tmp/cd_vit
  python -m tokax.train --config configs/cluttered_digits_sit.py --workdir /tmp/cd_sit \
      --config.distill.teacher_workdir=/tmp/cd_vit
  # runlocal (two blocks, one slimming), teacher from this file's `dense` mode:
  python -m tokax.train --config configs/cluttered_digits_sit.py:dense,runlocal --workdir /tmp/sit_t
  python -m tokax.train --config configs/cluttered_digits_sit.py:runlocal --workdir /tmp/sit_s \
      --config.distill.teacher_workdir=/tmp/sit_t

GPU mode (`:gpu`, scripts/device/cluttered_digits_evidence.sh): the student and teacher are
cluttered_digits_vit.py:gpu (ViT-S/8, 12 blocks), stage_blocks (3, 3, 3, 3): slimming after blocks 2, 5, 8
(196 -> 98 -> 49 -> 24 patch tokens), 600 steps of batch 128 at lr 2e-4 (about 1.5 min on an H100 beside
the MCTF and DeiT fine-tunes).

  python -m tokax.train --config configs/cluttered_digits_vit.py:gpu --workdir /tmp/cd_vit_gpu
  python -m tokax.train --config configs/cluttered_digits_sit.py:gpu --workdir /tmp/cd_sit_gpu \
      --config.distill.teacher_workdir=/tmp/cd_vit_gpu

Arguments (`:key=value,flag`): runlocal, gpu, dense (the teacher's config, no slimming or distillation).
"""
import os

import ml_collections

from tokax.train.config_utils import load_config_file, parse_arg

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluttered_digits_vit.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, gpu=False, dense=False)
  flags = ",".join(name for name in ("gpu", "runlocal") if arg[name])
  config = load_config_file(BASE + (f":{flags}" if flags else ""))
  stage_blocks = (3, 3, 3, 3) if arg.gpu else (1, 1, 1, 1)
  if arg.runlocal:  # two blocks, one slimming (gpu,runlocal: the dense gpu,runlocal run has two blocks already)
    config.model.depth = 2
    stage_blocks = (1, 1)
  else:
    config.total_steps = 600
    config.warmup_steps = 0
    config.lr = 2e-4  # SiT: lr 2e-4, no warmup
  if arg.dense:
    return config
  del config.reduction  # the base's string "none": a dict instead, so --config.reduction.keeping_ratio=... works
  config.reduction = dict(name="slim", stage_blocks=stage_blocks, keeping_ratio=0.5)
  # The teacher: the run in teacher_workdir (rebuilt from its config.json: the `dense` mode of this file, or
  # cluttered_digits_vit.py with gpu), or a timm file teacher_checkpoint for the model of teacher_config.
  config.distill = dict(kind="frd", lambda_token=2.0, lambda_logits=2.0, tau=1.0, teacher_workdir="",
                        teacher_checkpoint="", teacher_config="", init_student=True)
  return config
