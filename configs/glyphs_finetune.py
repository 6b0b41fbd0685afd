r"""Fine-tunes of a trained glyphs ViT, with and without a token reduction, all at one schedule.

The trained claims of the token-reduction papers ("training with the reduction recovers what it costs
off the shelf"; SiT's FRD; DeiT's hard distillation), each compared with the `dense` fine-tune of the
same start at the same schedule and seed (scripts/device/glyphs_claims.sh runs them with three seeds):

  python -m tokax.train --config configs/glyphs_vit.py:variant=S/16 --workdir /tmp/g_s16 \
      --config.total_steps=3000 --config.warmup_steps=300 --config.lr=8e-4
  python -m tokax.train --config configs/glyphs_finetune.py:method=tome,start=/tmp/g_s16 --workdir /tmp/ft_tome
  python -m tokax.train --config configs/glyphs_finetune.py:method=dense,start=/tmp/g_s16 --workdir /tmp/ft_dense
  # CPU, seconds: a runlocal start, then a runlocal fine-tune
  python -m tokax.train --config configs/glyphs_vit.py:runlocal --workdir /tmp/g_local
  python -m tokax.train --config configs/glyphs_finetune.py:method=mctf,start=/tmp/g_local,runlocal --workdir /tmp/ft_l

Methods (the reduction is trained and evaluated; `start` is the trained dense run every method begins from):
  dense   no reduction: the control (evaluated off the shelf with each reduction below)
  tome    ToMe r=16 with proportional attention (197 -> 11 tokens over 12 blocks), cross-entropy
  evit    EViT keep 0.5 at blocks 3, 6, 9 (0-based: EViT's own layers) with the fused token, cross-entropy
          (EViT's keep-rate warm-up is a from-scratch device; a fine-tune starts at the target rate)
  mctf    MCTF r=16 on every block + its consistency loss (teacher schedules r in (0, 4, 8, 12) drawn per
          step, weights 1 / 1 / 3 and threshold 0.4 as mlvlab/MCTF)
  sit     SiT token slimming (keeping 0.5 at the stage ends, 196 -> 98 -> 49 -> 24 patch tokens) with the FRD
          loss from the start run as teacher (Sense-X/SiT: CE + 2 token MSE + 2 KL, tau 1)
  sit_ce  the same slimming trained with cross-entropy alone (FRD's ablation)
  deit    DeiT hard-label distillation from the start run: a new distillation token and head, loss
          0.5 CE + 0.5 CE(argmax teacher), logits = the mean of both heads at evaluation

One schedule for all (so each method differs from `dense` only by its reduction or loss): batch 128,
`steps` steps (default 200: 25,600 new images; every glyphs training image is new), AdamW lr 1e-4 with 10%
warm-up and cosine decay, weight decay 0.05, label smoothing 0.1, shifts of up to 8 px. `seed` sets the
run's seed (new modules' init, augmentation, data order); the glyphs split seed stays 0 so every run is
scored on the same test images.

Arguments (`:key=value,flag`): method (above), start (the dense run's workdir; or set
--config.init_from.workdir / --config.distill.teacher_workdir), seed, steps, runlocal (the runlocal model of
configs/glyphs_vit.py, a few steps: tests and CPU smoke runs).
"""
import os

import ml_collections

from tokax.train.config_utils import load_config_file, parse_arg

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "glyphs_vit.py")
METHODS = {"dense": "none", "tome": "tome:16", "evit": "evit:0.5", "mctf": "mctf:16", "sit": "slim:0.5",
           "sit_ce": "slim:0.5", "deit": "none"}
_RUNLOCAL = {"dense": "none", "tome": "tome:2", "evit": "evit:0.5", "mctf": "mctf:2", "sit": "slim:0.5",
             "sit_ce": "slim:0.5", "deit": "none"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, method="dense", start="", variant="S/16", seed=0, steps=200, runlocal=False)
  if arg.method not in METHODS:
    raise ValueError(f"config argument: method must be one of {sorted(METHODS)}; got {arg.method!r}")
  if arg.steps < 1:
    raise ValueError(f"config argument: steps must be >= 1; got {arg.steps}")
  config = load_config_file(BASE + (":runlocal" if arg.runlocal else f":variant={arg.variant}"))
  config.seed = arg.seed
  config.reduction = (_RUNLOCAL if arg.runlocal else METHODS)[arg.method]

  if not arg.runlocal:
    config.batch_size = 128
    config.total_steps = arg.steps
    config.warmup_steps = max(1, arg.steps // 10)
    config.lr = 1e-4
    config.data.update(num_val=1000, num_test=2000, num_workers=2)
    config.log_every_steps = 50
    config.eval_every_steps = arg.steps
    config.checkpoint_every_steps = arg.steps
    config.keep_checkpoints = 1

  if arg.method == "mctf":
    teacher_r = (0, 1) if arg.runlocal else (0, 4, 8, 12)
    config.consistency = dict(teacher_r=teacher_r, weights=(1.0, 1.0, 3.0), threshold=0.4)
  if arg.method == "sit":
    config.distill = dict(kind="frd", lambda_token=2.0, lambda_logits=2.0, tau=1.0, teacher_workdir=arg.start,
                          teacher_checkpoint="", teacher_config="", init_student=True)
  elif arg.method == "deit":
    config.model.distilled = True
    config.distill = dict(kind="hard", alpha=0.5, teacher_workdir=arg.start, teacher_checkpoint="",
                          teacher_config="", init_student=True)
  else:
    config.init_from = dict(workdir=arg.start)
  return config
