r"""DeiT on ImageNet-1k (tfds imagenet2012) from scratch: DeiT-S/16 or DeiT-B/16, 300 epochs of DeiT's recipe.

  python -m tokax.train --config configs/imagenet_deit.py:variant=S/16 --workdir /runs/deit_s \
      --config.data.data_dir=/data/tensorflow_datasets
  python -m tokax.train --config configs/imagenet_deit.py:variant=B/16 --workdir /runs/deit_b
  # with DeiT's weight EMA (model-ema, evaluated beside the raw weights as val_ema/* and test_ema/*)
  python -m tokax.train --config configs/imagenet_deit.py:variant=S/16,ema_decay=0.99996 --workdir /runs/deit_s_ema
  # DeiT-S distilled: hard distillation from a frozen teacher, a tokax classifier run (its workdir) ...
  python -m tokax.train --config configs/imagenet_deit.py:variant=S/16,distill=/runs/deit_b --workdir /runs/deit_s_d
  # ... or a timm / DeiT / big_vision checkpoint file with the tokax config of its model
  python -m tokax.train --workdir /runs/deit_s_d2 --config 'configs/imagenet_deit.py:variant=S/16,'\
'distill=/ckpt/deit_base_patch16_224.safetensors,teacher_config=configs/imagenet_deit.py:variant=B/16'
  # CPU, seconds: a tiny model on tiny images for a few steps (tests/train/test_recipes.py runs it on the tiny
  # imagenet2012-shaped dataset of tests/data/tfds_testing.py)
  python -m tokax.train --config configs/imagenet_deit.py:runlocal --workdir /tmp/deit_local \
      --config.data.name=tfds:tokax_tiny_imagenet --config.data.data_dir=/tmp/tiny_tfds

Targets (ImageNet-1k validation top-1, 224 px, one center crop): DeiT-S 79.8, DeiT-B 81.8 (the DeiT paper;
facebookresearch/deit README_deit.md's model zoo gives the released weights 79.9 / 81.8, its eval logs
79.854 / 81.846; the ToMe and MCTF READMEs use 79.8 as DeiT-S's baseline). Distilled, with a RegNetY-16GF
teacher (82.9%): DeiT-S⚗ 81.2, DeiT-B⚗ 83.4 (the same model zoo: 81.164 / 83.372 in its eval logs).
tokax has no convnets, so its teacher is a ViT (a tokax run, or a timm / DeiT / AugReg ViT file): the
distilled targets hold for the RegNetY teacher only, a ViT teacher is expected to give less (the paper's
finding that a convnet teacher beats a transformer one).

Recipe: DeiT's main.py defaults (facebookresearch/deit at 7e160fe) and the README's training commands
(DeiT-S: 4 GPUs x 256; DeiT-B: 16 GPUs x 64). Each line is a config field and its value (an expression in
the config's own batch_size where the recipe scales with it), checked against get_config() by
tests/train/test_recipes.py:
  batch_size = 1024
  optimizer = 'adamw'
  lr = 5e-4 * batch_size / 512
  min_lr = 1e-5
  warmup_epochs = 5
  total_epochs = 300
  weight_decay = 0.05
  grad_clip_norm = 0.0
  label_smoothing = 0.1
  model.drop_path = 0.1
  model.image_size = 224
  data.repeated_augmentation = 3
  data.batch_ops = 'mixup_cutmix(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)'
  data.preprocess = 'decode|inception_crop(224, interpolation="bicubic")|flip_lr|rand_augment("rand-m9-mstd0.5-inc1", interpolation="bicubic")|normalize|random_erasing(0.25)'
  data.preprocess_eval = 'decode|resize_center_crop(224, crop_pct=0.875, interpolation="bicubic")|normalize'

That is: AdamW (betas 0.9 / 0.999, eps 1e-8, weight decay on the kernels only, timm's no-decay list), lr
5e-4 x batch / 512 with 5 warmup epochs and a cosine to 1e-5; RandAugment m9 mstd0.5 inc1 (bicubic) after a
bicubic inception crop and a flip, Mixup 0.8 / CutMix 1.0 switching at 0.5 with label smoothing 0.1,
RandomErasing 0.25 (pixel mode, after normalize), repeated augmentation x3 (timm's RepeatAugSampler: an epoch
is ~1.28M draws, each of a third of the images seen three times), stochastic depth 0.1 (both S and B); eval:
Resize(256, bicubic) + CenterCrop(224) (224 / 0.875), ImageNet mean / std. ema_decay (an argument, default 0:
off) keeps DeiT's model-ema (0.99996 in DeiT's code, where it is on by default; the README's numbers are the
raw weights'). Validation: val/* every 10 epochs on the first 20% (10,000) of the validation images, test/*
at the end on all 50,000 (the reported number).

Deliberate differences from DeiT's code:
- the lr schedule is per step (warmup from 0, cosine to min_lr at the last step); timm's is per epoch (warmup
  from 1e-6), which DeiT steps once an epoch;
- computation in bfloat16 (model.dtype) where DeiT runs torch.cuda.amp (float16 autocast, loss scaling);
- timm's RandAugment / RandomErasing / Mixup draws come from tokax's own numpy generators (same distributions;
  tests/data/test_transforms_timm.py checks the pixels equal given the same draws), and DeiT's repeated
  augmentation keeps floor(N // 256 * 256 / world) examples per process (tokax.data.pipeline does the same).

Arguments (`:key=value,flag`): variant (S/16 default, B/16, Ti/16), ema_decay, distill (a teacher: a tokax
run's workdir, or a checkpoint file .safetensors / .pth / .npz), teacher_config (the tokax config of a
checkpoint teacher's model, "configs/x.py[:arg]"), runlocal (a 2-block, 32-wide model on 64 px images for two
steps of 8, in float32: the CPU smoke run the tests use).
"""
import ml_collections

from tokax.train.config_utils import parse_arg

IMAGE_SIZE = 224
RUNLOCAL_IMAGE_SIZE = 64
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".pth.tar", ".npz")


def train_preprocess(image_size: int) -> str:
  """DeiT's training transform (timm's create_transform with DeiT's arguments), as tokax ops."""
  return (f'decode|inception_crop({image_size}, interpolation="bicubic")|flip_lr|'
          f'rand_augment("rand-m9-mstd0.5-inc1", interpolation="bicubic")|normalize|random_erasing(0.25)')


def eval_preprocess(image_size: int) -> str:
  """DeiT's eval transform: Resize(size / 0.875, bicubic) + CenterCrop(size), ImageNet mean / std."""
  return f'decode|resize_center_crop({image_size}, crop_pct=0.875, interpolation="bicubic")|normalize'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant="S/16", ema_decay=0.0, distill="", teacher_config="", runlocal=False)
  image_size = RUNLOCAL_IMAGE_SIZE if arg.runlocal else IMAGE_SIZE
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = dict(
      name="tfds:imagenet2012", data_dir=ml_collections.config_dict.placeholder(str), seed=0,
      train_split="train", val_split="validation[:20%]", test_split="validation",
      preprocess=train_preprocess(image_size), preprocess_eval=eval_preprocess(image_size),
      batch_ops="mixup_cutmix(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)",
      repeated_augmentation=3, num_workers=16, num_threads=8)
  config.augment = dict(max_shift=0)

  config.model = dict(
      name="vit", num_classes=ml_collections.config_dict.placeholder(int), variant=arg.variant,
      image_size=image_size, pool="cls", drop_path=0.1, dtype="bfloat16", attention="auto", interpret=False)
  config.reduction = "none"

  config.batch_size = 1024
  config.base_lr = 5e-4  # DeiT's --lr, per 512 images: lr follows --config.batch_size
  config.lr = config.get_ref("base_lr") * config.get_ref("batch_size") / 512
  config.min_lr = 1e-5
  config.optimizer = "adamw"
  config.weight_decay = 0.05
  config.grad_clip_norm = 0.0
  config.label_smoothing = 0.1
  config.ema_decay = arg.ema_decay
  config.total_epochs = 300.0
  config.total_steps = ml_collections.config_dict.placeholder(int)
  config.warmup_epochs = 5.0
  config.warmup_steps = ml_collections.config_dict.placeholder(int)

  config.mesh = dict(data=-1, model=1)
  config.sharding = dict(preset="replicated", rules=())
  config.distributed = False

  config.log_every_steps = 100
  config.eval_every_epochs = 10.0
  config.eval_every_steps = ml_collections.config_dict.placeholder(int)
  config.checkpoint_every_epochs = 1.0
  config.checkpoint_every_steps = ml_collections.config_dict.placeholder(int)
  config.keep_checkpoints = 2
  config.eval_batch_size = 1024
  config.progress_bar = True

  if arg.distill:
    # DeiT's hard-label distillation: 0.5 CE(class head, y) + 0.5 CE(distillation head, argmax teacher); the
    # student trains from scratch; at evaluation the logits are the mean of both heads.
    config.model.distilled = True
    is_file = arg.distill.endswith(CHECKPOINT_SUFFIXES)
    config.distill = dict(kind="hard", alpha=0.5, teacher_workdir="" if is_file else arg.distill,
                          teacher_checkpoint=arg.distill if is_file else "", teacher_config=arg.teacher_config,
                          init_student=False)

  if arg.runlocal:
    config.model.update(width=32, depth=2, num_heads=2, mlp_dim=64, dtype="float32")  # XLA:CPU compiles bf16 slower
    config.data.update(num_workers=0, num_threads=2)
    config.batch_size = 8
    config.eval_batch_size = 8
    config.total_epochs = None
    config.total_steps = 2
    config.warmup_epochs = None
    config.warmup_steps = 1
    config.log_every_steps = 1
    config.eval_every_epochs = None
    config.eval_every_steps = 0
    config.checkpoint_every_epochs = None
    config.checkpoint_every_steps = 0
    config.progress_bar = False
  return config
