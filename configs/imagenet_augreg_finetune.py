r"""AugReg ViT-B/16: fine-tune the ImageNet-21k AugReg checkpoint on ImageNet-1k (tfds imagenet2012), at 224 or 384 px.

  # the upstream checkpoint: gs://vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz
  python -m tokax.train --config configs/imagenet_augreg_finetune.py:image_size=224,init=/ckpt/B_16-i21k.npz \
      --workdir /runs/augreg_b16_224 --config.data.data_dir=/data/tensorflow_datasets
  python -m tokax.train --config configs/imagenet_augreg_finetune.py:image_size=384,init=/ckpt/B_16-i21k.npz \
      --workdir /runs/augreg_b16_384
  # CPU, seconds (tests/train/test_recipes.py: a tiny .npz in the same layout, the tiny imagenet2012-shaped tfds
  # dataset of tests/data/tfds_testing.py)
  python -m tokax.train --config configs/imagenet_augreg_finetune.py:runlocal,init=/tmp/tiny_augreg.npz \
      --workdir /tmp/augreg_local --config.data.name=tfds:tokax_tiny_imagenet --config.data.data_dir=/tmp/tiny_tfds

Targets (ImageNet-1k validation top-1): 84.53 at 224 px, 86.01 at 384 px: timm's results-imagenet.csv
(huggingface/pytorch-image-models at aa4b585) for vit_base_patch16_224.augreg_in21k_ft_in1k (84.534, crop_pct
0.9, bicubic) and vit_base_patch16_384.augreg_in21k_ft_in1k (86.010, crop_pct 1.0), whose weights are this
fine-tune of this upstream checkpoint: timm's pretrained cfgs load
B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_{224,384}.npz
(20k steps at lr 0.01, at 224 / 384 px). ToMe's README measured the same 224 px weights at 84.57.

Recipe: "How to train your ViT?" (Steiner et al., AugReg)'s fine-tuning code, google-research/vision_transformer
at its current main (vit_jax/configs/common.py and augreg.py, vit_jax/train.py, input_pipeline.py,
checkpoint.py), with the lr and steps of the checkpoints above. Each line is a config field and its value,
checked against get_config() by tests/train/test_recipes.py:
  batch_size = 512
  optimizer = 'sgd'
  momentum = 0.9
  nesterov = False
  lr = 0.01
  min_lr = 0.0
  weight_decay = 0.0
  grad_clip_norm = 1.0
  warmup_steps = 500
  total_steps = 20000
  label_smoothing = 0.0
  model.drop_path = 0.0
  model.gelu_approximate = True
  data.train_split = 'train[:99%]'
  data.val_split = 'train[99%:]'
  data.test_split = 'validation'
  data.batch_ops = ''
  data.repeated_augmentation = 0
  data.preprocess = 'decode|inception_crop(224, area_min=5)|flip_lr|value_range(-1, 1)'
  data.preprocess_eval = 'decode|resize_center_crop(224, crop_pct=0.9, interpolation="bicubic")|value_range(-1, 1)'

That is: SGD with momentum 0.9 (optax.sgd: no Nesterov), no weight decay, gradient clipping at global norm 1,
lr 0.01 with 500 linear warmup steps and a cosine to 0 over 20,000 steps of batch 512 (~8 epochs), softmax
cross-entropy without label smoothing, no mixup; the model without dropout or stochastic depth (augreg.py sets
dropout_rate 0), flax's tanh GELU as in vit_jax; the head reset to zeros (the 21,843-class i21k head is dropped)
and the position embeddings resampled bilinearly to the 384 px grid (init_from.checkpoint, as vit_jax's
load_pretrained / interpolate_posembed); train on train[:99%] (inception crop of 5-100% of the area, flip,
[-1, 1]), minival train[99%:] as val/*, the 50,000 validation images as test/* (the reported number). At 384 px
the preprocessing strings read 384 for 224 and crop_pct=1.0 (timm's cfg for the 384 px weights).

Deliberate differences from vit_jax:
- evaluation uses timm's transform for these weights (the targets' source: shorter side to 224 / 0.9 = 248,
  bicubic, center crop 224; 384: resize 384 + center crop), where vit_jax squashes the whole image to 224 x 224
  (bilinear) while fine-tuning; train-time resizing is PIL's (antialiased) where vit_jax's tf.image.resize is
  not;
- the momentum accumulator is float32 (vit_jax keeps it in bfloat16); computation in bfloat16 (vit_jax: float32
  parameters, TPU default matmul precision).

Arguments (`:key=value,flag`): image_size (224 or 384), init (the upstream .npz; a timm / big_vision file or a
timm name with a weights tag also work), runlocal (a 2-block, 32-wide B/16 on 64 px images for two steps of 8, in
float32).
"""
import ml_collections

from tokax.train.config_utils import parse_arg

UPSTREAM = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz"
CROP_PCT = {224: 0.9, 384: 1.0}  # timm's pretrained cfgs of the 224 / 384 px fine-tunes
RUNLOCAL_IMAGE_SIZE = 64


def train_preprocess(image_size: int) -> str:
  """vit_jax's fine-tuning crop (tf.image.sample_distorted_bounding_box, area 5-100%), flip, [-1, 1]."""
  return f"decode|inception_crop({image_size}, area_min=5)|flip_lr|value_range(-1, 1)"


def eval_preprocess(image_size: int, crop_pct: float) -> str:
  """timm's eval transform of the fine-tuned weights (Resize(size / crop_pct, bicubic) + CenterCrop), [-1, 1]."""
  return f'decode|resize_center_crop({image_size}, crop_pct={crop_pct}, interpolation="bicubic")|value_range(-1, 1)'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, image_size=224, init=UPSTREAM, runlocal=False)
  if arg.image_size not in CROP_PCT:
    raise ValueError(f"config argument: image_size must be one of {sorted(CROP_PCT)} (the AugReg fine-tunes timm "
                     f"publishes); got {arg.image_size}")
  crop_pct = CROP_PCT[arg.image_size]
  image_size = RUNLOCAL_IMAGE_SIZE if arg.runlocal else arg.image_size
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = dict(
      name="tfds:imagenet2012", data_dir=ml_collections.config_dict.placeholder(str), seed=0,
      train_split="train[:99%]", val_split="train[99%:]", test_split="validation",
      preprocess=train_preprocess(image_size), preprocess_eval=eval_preprocess(image_size, crop_pct),
      batch_ops="", repeated_augmentation=0, num_workers=16, num_threads=8)
  config.augment = dict(max_shift=0)

  config.model = dict(
      name="vit", num_classes=ml_collections.config_dict.placeholder(int), variant="B/16", image_size=image_size,
      pool="cls", drop_path=0.0, gelu_approximate=True, dtype="bfloat16", attention="auto", interpret=False)
  config.reduction = "none"
  config.init_from = dict(checkpoint=arg.init)

  config.batch_size = 512
  config.optimizer = "sgd"
  config.momentum = 0.9
  config.nesterov = False
  config.lr = 0.01
  config.min_lr = 0.0
  config.weight_decay = 0.0
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.0
  config.total_steps = 20_000
  config.total_epochs = ml_collections.config_dict.placeholder(float)
  config.warmup_steps = 500

  config.mesh = dict(data=-1, model=1)
  config.sharding = dict(preset="replicated", rules=())
  config.distributed = False

  config.log_every_steps = 100
  config.eval_every_steps = 2000
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2
  config.eval_batch_size = 512
  config.progress_bar = True

  if arg.runlocal:
    config.model.update(width=32, depth=2, num_heads=2, mlp_dim=64, dtype="float32")  # XLA:CPU compiles bf16 slower
    config.data.update(num_workers=0, num_threads=2)
    config.batch_size = 8
    config.eval_batch_size = 8
    config.total_steps = 2
    config.warmup_steps = 1
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 0
    config.progress_bar = False
  return config
