r"""Token reduction trained on ImageNet-1k (tfds imagenet2012) as each paper trains it, on DeiT-S/16.

  # MCTF, EViT and SiT fine-tune a dense DeiT-S: timm's deit_small_patch16_224.fb_in1k (the DeiT authors'
  # deit_small_patch16_224-cd65a155.pth) by default, from the Hugging Face hub or its cache; or a file
  python -m tokax.train --config configs/imagenet_finetune_reduction.py:method=mctf --workdir /runs/mctf_deit_s \
      --config.data.data_dir=/data/tensorflow_datasets
  python -m tokax.train --config configs/imagenet_finetune_reduction.py:method=evit --workdir /runs/evit_deit_s
  python -m tokax.train --config configs/imagenet_finetune_reduction.py:method=sit,init=/ckpt/deit_s.safetensors \
      --workdir /runs/sit_deit_s
  # ToMe trains DeiT-S from scratch with merging on (the DeiT recipe of configs/imagenet_deit.py)
  python -m tokax.train --config configs/imagenet_finetune_reduction.py:method=tome --workdir /runs/tome_deit_s
  # a tokax run as the start (its workdir) works too, e.g. the dense run of configs/imagenet_deit.py
  python -m tokax.train --config configs/imagenet_finetune_reduction.py:method=evit,init=/runs/deit_s --workdir /runs/e
  # CPU, seconds (tests/train/test_recipes.py), from a runlocal run of configs/imagenet_deit.py
  python -m tokax.train --config configs/imagenet_finetune_reduction.py:method=mctf,runlocal,init=/tmp/deit_local \
      --workdir /tmp/mctf_local --config.data.name=tfds:tokax_tiny_imagenet --config.data.data_dir=/tmp/tiny_tfds
DToMe trains nothing (DyMU calibrates thresholds on a trained model): configs/imagenet_dtome.py, for
`python -m tokax.evaluate`.

Every method keeps configs/imagenet_deit.py's DeiT-S data pipeline, model and AdamW unless its block below
says otherwise (RandAugment m9 mstd0.5 inc1, RandomErasing 0.25, repeated augmentation x3, label smoothing 0.1,
stochastic depth 0.1, weight decay 0.05, eval Resize 256 + CenterCrop 224 bicubic); each "Recipe" line is a
config field and its value (an expression in the config's own batch_size where the recipe scales with it),
checked against get_config("method=...") by tests/train/test_recipes.py.

method=mctf  MCTF, Multi-criteria Token Fusion (Lee, Choi, Kim, CVPR 2024). Target 80.1 top-1 at 2.6 GFLOPs
  (mlvlab/MCTF README model zoo, "MCTF (DeiT-S)", from DeiT-S's 79.8). Recipe: the README's fine-tuning
  command (8 GPUs x 128, --lr_times 0.03 --min_lr_times 0.1 --epochs 30, --mctf_type [16,8,0,1,1,1,20,40,1,1,0],
  --activate_layer [1..11], --task_type [1,1,0.4] --task_weight [1.0,1.0,3.0]) over main.py's defaults at
  2004da0 (with --pretrained its warmup is 0; mixup and cutmix default to 0 there):
  Recipe [mctf]:
  batch_size = 1024
  lr = 5e-4 * 0.03 * batch_size / 512
  min_lr = 1e-5 * 0.1
  warmup_epochs = 0
  total_epochs = 30
  weight_decay = 0.05
  label_smoothing = 0.1
  data.batch_ops = ''
  reduction.name = 'mctf'
  reduction.r = 16
  reduction.activate_layers = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
  consistency.teacher_r = (0, 1, 2, 3, 4, 5, 6, 7)
  consistency.weights = (1.0, 1.0, 3.0)
  consistency.threshold = 0.4
  (tau_sim 1, tau_info 20, tau_size 40, bidirectional, attention x size pooling, proportional attention: MCTF's
  defaults.) Not reproduced: timm's 10 cooldown epochs at min_lr after the 30 (MCTF's main.py trains
  epochs + cooldown_epochs = 40); the per-step teacher r is drawn from the compiled set 0..7 (the official
  torch.randint(8)), so one step holds all eight teacher schedules; repeated augmentation x3 is DeiT's default,
  which MCTF's data.py reads (args.repeated_aug) though its main.py at 2004da0 never defines the flag.

method=evit  EViT (Liang et al., ICLR 2022), keep rate 0.7 at blocks 3, 6, 9 with the fused inattentive token.
  Target 79.5 top-1 at 3.0 GMACs (youweiliang/evit README model zoo, token fusion, keep rate 0.7; the author
  confirms finetune.sh reaches 79.5, issue #9). Recipe: finetune.sh (8 GPUs x 256, --lr 2e-5 --min-lr 2e-6
  --weight-decay 1e-6 --warmup-epochs 0 --epochs 30 --shrink_start_epoch 0 --shrink_epochs 0, from
  deit_small_patch16_224-cd65a155.pth) over main.py's DeiT defaults (lr x batch / 512):
  Recipe [evit]:
  batch_size = 2048
  lr = 2e-5 * batch_size / 512
  min_lr = 2e-6
  warmup_epochs = 0
  total_epochs = 30
  weight_decay = 1e-6
  label_smoothing = 0.1
  data.batch_ops = 'mixup_cutmix(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)'
  reduction.name = 'evit'
  reduction.keep_rate = 0.7
  reduction.fuse_token = True
  The keep rate is 0.7 from the first step: the fine-tune sets shrink_epochs 0. EViT's keep-rate warm-up
  (adjust_keep_rate: 1.0 until epoch 10, then a cosine to 0.7 over 100 epochs) belongs to its 300-epoch
  from-scratch recipe (run_code.sh), which this file does not reproduce: tokax has no keep-rate schedule
  (tokax/reduction/schedule.py holds ToMe's r schedules; every distinct keep rate is a different token count,
  so each would be its own compiled step).

method=sit  SiT, Self-slimmed ViT (Zong et al., ECCV 2022): Token Slimming Modules (keeping ratio 0.5 at the
  ends of four 3-block stages: 196 -> 98 -> 49 -> 24 patch tokens) trained with Feature Recalibration
  Distillation from the dense DeiT-S (the student starts from it, as --finetune). Target: none verified. The
  released code and numbers are LV-ViT's only (README: SiT-XS 81.2 from LV-ViT-S 83.1); no DeiT-S number could
  be read here, so this run is measured against dense DeiT-S (79.8) and MCTF / EViT above. Recipe: the README's
  train.sh (8 GPUs x 128, --epoch 125 --lr 2e-4 --warmup-epochs 0 --distillation-type frd --lambda-token 2.0
  --lambda-logits 2.0) over main.py's defaults (lr x batch / 512, min-lr 1e-5, tau 1):
  Recipe [sit]:
  batch_size = 1024
  lr = 2e-4 * batch_size / 512
  min_lr = 1e-5
  warmup_epochs = 0
  total_epochs = 125
  weight_decay = 0.05
  reduction.name = 'slim'
  reduction.keeping_ratio = 0.5
  distill.kind = 'frd'
  distill.lambda_token = 2.0
  distill.lambda_logits = 2.0
  distill.tau = 1.0
  distill.init_student = True
  Not reproduced: the 10 cooldown epochs at min_lr (SiT's main.py loops epochs + cooldown_epochs); the stage
  split for a 12-block DeiT-S is tokax's default (3, 3, 3, 3) (the LV-ViT variants use their own splits).

method=tome  ToMe (Bolya et al., ICLR 2023) "works during training too": DeiT-S trained from scratch with r = 13
  (proportional attention on), the README's table of DeiT models "trained using the official implementation":
  DeiT-S/16, original 79.8, r 13, ToMe 79.36 (930 -> 1550 im/s on a V100). Target 79.36. Recipe: DeiT's, exactly
  configs/imagenet_deit.py:variant=S/16 (its Recipe lines hold), with
  Recipe [tome]:
  total_epochs = 300
  lr = 5e-4 * batch_size / 512
  reduction.name = 'tome'
  reduction.r = 13
  reduction.prop_attn = True

Arguments (`:key=value,flag`): method (mctf, evit, sit, tome), init (the dense DeiT-S to fine-tune: a timm name
with a weights tag, a .safetensors / .pth / .npz file, or a tokax run's workdir; SiT's FRD teacher too;
ignored by tome), runlocal (configs/imagenet_deit.py's runlocal model and sizes; layer lists follow its depth;
MCTF's teacher draws from (0, 7), the ends of 0..7, so the CPU step compiles two teacher schedules, not eight).
"""
import os

import ml_collections

from tokax.interop import timm_names
from tokax.train.config_utils import load_config_file, parse_arg

DEIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_deit.py")
METHODS = ("mctf", "evit", "sit", "tome")
DEIT_S = "deit_small_patch16_224.fb_in1k"  # timm's name of deit_small_patch16_224-cd65a155.pth
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".pth.tar", ".npz")


def is_checkpoint(init: str) -> bool:
  """Whether `init` names a checkpoint file or a timm name (else a tokax run's workdir)."""
  return init.endswith(CHECKPOINT_SUFFIXES) or timm_names.is_timm_name(init)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, method="mctf", init=DEIT_S, runlocal=False)
  if arg.method not in METHODS:
    raise ValueError(f"config argument: method must be one of {METHODS} (DToMe: configs/imagenet_dtome.py); "
                     f"got {arg.method!r}")
  deit_arg = "variant=S/16" + (",runlocal" if arg.runlocal else "")
  config = load_config_file(f"{DEIT}:{deit_arg}")
  depth = config.model.get("depth") or 12
  start = dict(checkpoint=arg.init) if is_checkpoint(arg.init) else dict(workdir=arg.init)
  del config.reduction  # the base's string "none": a dict instead, so --config.reduction.r=... overrides a field

  if arg.method == "mctf":
    config.base_lr = 5e-4 * 0.03  # --lr_times 0.03 of DeiT's 5e-4 (lr = base_lr * batch_size / 512)
    config.min_lr = 1e-5 * 0.1  # --min_lr_times 0.1 of DeiT's 1e-5
    config.data.batch_ops = ""
    config.reduction = dict(name="mctf", r=16, activate_layers=tuple(range(1, depth)))
    teacher_r = tuple(range(8))  # the official torch.randint(r_teacher_max=8); runlocal compiles its ends only
    config.consistency = dict(teacher_r=(teacher_r[0], teacher_r[-1]) if arg.runlocal else teacher_r,
                              weights=(1.0, 1.0, 3.0), threshold=0.4)
    config.init_from = start
    durations = dict(warmup_epochs=0.0, total_epochs=30.0)
  elif arg.method == "evit":
    config.base_lr = 2e-5
    config.min_lr = 2e-6
    config.weight_decay = 1e-6
    config.reduction = dict(name="evit", keep_rate=0.7, fuse_token=True)
    config.init_from = start
    durations = dict(batch_size=2048, warmup_epochs=0.0, total_epochs=30.0)
  elif arg.method == "sit":
    config.base_lr = 2e-4
    config.min_lr = 1e-5
    config.reduction = dict(name="slim", keeping_ratio=0.5)
    teacher = (dict(teacher_checkpoint=arg.init, teacher_workdir="", teacher_config=f"{DEIT}:{deit_arg}")
               if is_checkpoint(arg.init) else dict(teacher_checkpoint="", teacher_workdir=arg.init, teacher_config=""))
    config.distill = dict(kind="frd", lambda_token=2.0, lambda_logits=2.0, tau=1.0, init_student=True, **teacher)
    durations = dict(warmup_epochs=0.0, total_epochs=125.0)
  else:  # tome: DeiT's recipe from scratch, with merging on
    config.reduction = dict(name="tome", r=13, prop_attn=True)
    durations = {}
  if not arg.runlocal:  # runlocal keeps imagenet_deit.py's (two steps of 8, one warmup step)
    config.update(durations)
  return config
