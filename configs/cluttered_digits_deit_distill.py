r"""DeiT hard-label distillation on cluttered digits: a ViT with a distillation token learns from a frozen teacher.

The student (the dense cluttered_digits_vit model plus DeiT's distillation token and head) trains
from scratch with loss 0.5 CE(class head, y) + 0.5 CE(distillation head, argmax teacher), the
teacher (any tokax classifier, restored from its workdir, or a timm checkpoint file through
distill.teacher_checkpoint) running frozen inside the jitted step. At evaluation the logits are
the mean of both heads (timm / DeiT).

  # the teacher: the dense run of configs/cluttered_digits_vit.py
  python -m tokax.train --config configs/cluttered_digits_vit.py --workdir /tmp/cd_vit
  python -m tokax.train --config configs/cluttered_digits_deit_distill.py --workdir /tmp/cd_deit \
      --config.distill.teacher_workdir=/tmp/cd_vit
  # runlocal: a tiny dense teacher from this file's `dense` mode, then the student
  python -m tokax.train --config configs/cluttered_digits_deit_distill.py:dense,runlocal --workdir /tmp/deit_t
  python -m tokax.train --config configs/cluttered_digits_deit_distill.py:runlocal --workdir /tmp/deit_s \
      --config.distill.teacher_workdir=/tmp/deit_t

GPU mode (`:gpu`, scripts/device/cluttered_digits_evidence.sh): student and teacher are
cluttered_digits_vit.py:gpu (ViT-S/8); unlike DeiT, the student starts from the teacher's weights
(init_student=True: the distillation token and head are new), because 600 steps (about 1.5 min on an
H100 beside the SiT and MCTF fine-tunes) are far too few to train a ViT-S from scratch.

  python -m tokax.train --config configs/cluttered_digits_vit.py:gpu --workdir /tmp/cd_vit_gpu
  python -m tokax.train --config configs/cluttered_digits_deit_distill.py:gpu --workdir /tmp/cd_deit_gpu \
      --config.distill.teacher_workdir=/tmp/cd_vit_gpu

Arguments (`:key=value,flag`): runlocal (a few steps of a tiny model), gpu, dense (the teacher's config:
cluttered_digits_vit at the same size, no distillation).
"""
import os

import ml_collections

from tokax.train.config_utils import load_config_file, parse_arg

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluttered_digits_vit.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False, gpu=False, dense=False)
  flags = ",".join(name for name in ("gpu", "runlocal") if arg[name])
  base = BASE + (f":{flags}" if flags else "")
  config = load_config_file(base)
  if arg.dense:
    return config
  config.model.distilled = True
  config.distill = dict(
      kind="hard", alpha=0.5,
      teacher_workdir="",      # a finished tokax run (the `dense` mode), rebuilt from its config.json
      teacher_checkpoint="",   # or a timm / DeiT checkpoint file ...
      teacher_config="",       # ... for the model of this config file ("configs/x.py[:arg]")
      init_student=arg.gpu)    # DeiT trains the student from scratch; the short gpu run fine-tunes the teacher
  if arg.gpu and not arg.runlocal:
    config.total_steps = 600
    config.warmup_steps = 40
    config.lr = 2e-4
  return config
