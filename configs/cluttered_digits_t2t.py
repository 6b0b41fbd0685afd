r"""T2T-ViT-7 trained from scratch on cluttered digits at 224 px (196 tokens + cls after the T2T stem).

The T2T-ViT side of the issue-4 comparison "T2T-ViT-7 vs ViT-Ti at similar FLOPs": T2T-ViT-7 at 224
is about 1.1 GFLOPs per image, ViT-Ti/16 at 224 about 1.3 (train that one with
configs/cluttered_digits_vit.py:variant=Ti/16,width=192,depth=12,heads=3 --config.model.image_size=224
--config.model.mlp_dim=768). Sized for a GPU: the 224 px stem attends over 3,136 tokens first.

  python -m tokax.train --config configs/cluttered_digits_t2t.py --workdir /tmp/cluttered_t2t
  python -m tokax.train --config configs/cluttered_digits_t2t.py:variant=t_14 --workdir /tmp/cluttered_t2t_t14
  python -m tokax.train --config configs/cluttered_digits_t2t.py:image_size=112 --workdir /tmp/ct2t112
  python -m tokax.train --config configs/cluttered_digits_t2t.py:runlocal --workdir /tmp/cluttered_t2t_local

Expected: not measured yet (no GPU run so far); on an idle 2-core CPU the default runs at a few
images/s, so use image_size=112 (7x7 tokens) or runlocal there. The train split is held in host
memory as float32: 19,200 images at 224 px are 11.6 GB.
GPU mode (`:gpu`, scripts/device/cluttered_digits_evidence.sh): bfloat16, batch 128, 1,500 steps (192k
images, 10 epochs) at lr 1e-3 with 150 warm-up steps, label smoothing 0.1, no drop-path (too short a run);
the ViT-Ti/16 side runs the same recipe:

  python -m tokax.train --config configs/cluttered_digits_t2t.py:gpu --workdir /tmp/cd_t2t7
  python -m tokax.train --config configs/cluttered_digits_vit.py:gpu,variant=Ti/16,width=192,depth=12,heads=3,image_size=224 \
      --workdir /tmp/cd_vit_ti16 --config.total_steps=1500 --config.warmup_steps=150 --config.data.num_train=19200 \
      --config.augment.max_shift=8

Estimated at 224 px: 1-1.5 min of training each alone on an H100, about 3 min each beside the dense ViT-S/8
run; generating the 19,200 images takes about 45 s of one host core (11.6 GB float32).
Arguments (`:key=value,flag`): gpu (the recipe above), variant (a T2T-ViT preset: 7, 10, 12, 14, 19, 24, t_14, t_19, t_24),
tokens_type (performer / transformer; default: the preset's), image_size (a multiple of 16),
runlocal (a few steps of a one-block model at 32 px, for tests).
"""
import ml_collections

from tokax.train.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant="7", tokens_type="", image_size=224, gpu=False, runlocal=False)
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = dict(name="cluttered_digits", num_train=19_200, num_val=500, num_test=1000, seed=0)
  config.augment = dict(max_shift=8)

  # Backbone overrides default to the preset's (None), typed so that --config.model.width=64 parses.
  unset = ml_collections.config_dict.placeholder
  # T2TViT(**fields) (tokax.train.model.MODELS[name]); num_classes: the data's when unset.
  config.model = dict(
      name="t2t_vit", num_classes=unset(int), variant=arg.variant, tokens_type=unset(str), image_size=arg.image_size,
      drop_path=0.1, dtype="float32", width=unset(int), depth=unset(int), num_heads=unset(int),
      mlp_ratio=unset(float), attention="auto", interpret=False)
  if arg.tokens_type:
    config.model.tokens_type = arg.tokens_type
  # A tokax.reduction.build spec; a string, so --config.reduction=tome:16 (or evit:0.7, ...) overrides it.
  config.reduction = "none"  # trained dense; ToMe is applied at test.

  config.batch_size = 64
  config.total_steps = 1200
  config.total_epochs = ml_collections.config_dict.placeholder(float)
  config.warmup_steps = 120
  config.lr = 5e-4
  config.weight_decay = 0.05
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.0

  config.log_every_steps = 50
  config.eval_every_steps = 400
  config.checkpoint_every_steps = 400
  config.keep_checkpoints = 2
  config.eval_batch_size = 250
  config.progress_bar = True

  if arg.gpu:
    config.model.update(dtype="bfloat16", drop_path=0.0)
    config.batch_size = 128
    config.total_steps = 1500
    config.warmup_steps = 150
    config.lr = 1e-3
    config.label_smoothing = 0.1
    config.log_every_steps = 100
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.eval_batch_size = 500
    config.progress_bar = False
  if arg.runlocal:
    config.model.update(image_size=32, width=32, depth=1, num_heads=2, mlp_ratio=2.0, drop_path=0.0)
    config.data.update(num_train=64, num_val=32, num_test=32)
    config.augment.max_shift = 2
    config.batch_size = 16
    config.total_steps = 3
    config.warmup_steps = 1
    config.log_every_steps = 1
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_batch_size = 32
  return config
