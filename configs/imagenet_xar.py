r"""xAR-B on ImageNet 256: next-cell flow matching on the 16 x 16 x 16 latent of a tokax KL-16 tokenizer run.

  python -m tokax.train --config configs/imagenet_tokenizer.py --workdir /tmp/imagenet_kl16
  python -m tokax.train --config configs/imagenet_xar.py:tokenizer=/tmp/imagenet_kl16 --workdir /tmp/imagenet_xar_b
  python -m tokax.sample --workdir /tmp/imagenet_xar_b --num 50000 --batch_size 250
  python -m tokax.train --config configs/imagenet_tokenizer.py:runlocal --workdir /tmp/kl_local
  python -m tokax.train --config configs/imagenet_xar.py:runlocal,tokenizer=/tmp/kl_local --workdir /tmp/xar_local

The latent (config.latent, tokax.train.tasks.xar): the tokenizer run in `tokenizer` (its EMA weights, at its
latest checkpoint; config.data.image_size must be the size it trained at), encoding each batch as
scale * a posterior sample, as xAR trains on MAR's `posterior.sample() * 0.2325`; the scale is the one the
tokenizer run recorded at its end (1 / std of its latent samples; --config.latent.scale=0.2325 to force MAR's).
config.json records the scale and tokenizer step used; samples decode through the tokenizer's decoder.

The real size, xAR-B as the official code trains it (OliverRensu/xAR; notes in generative.md 2.4-2.6):
D=768, 8 + 8 blocks, 12 heads, GeGLU MLP x4, dropout 0.1 on attention and projections (172.6M parameters);
next-cell entities of 8 x 8 latent tokens (4 AR steps), Noisy Context Learning, label drop 0.1;
AdamW(0.9, 0.96), wd 0.02, grad clip 1.0, lr 4e-4 (blr 5e-5 x 2048 / 256) at batch 2048 for 800 epochs
(500k steps): warmup 100 epochs, constant to 600, cosine to 1e-5 at 800; EMA 0.9999; bfloat16 compute.
Data: centre crops at 256 (ADM) with random flips. Sampling: Euler-Maruyama, 40 steps per cell, cfg 2.7
with the linear schedule.
Published: xAR-B reaches FID 1.72 on ImageNet 256 (50k samples, cfg; Ren et al., "Beyond Next-Token: Next-X
Prediction for Autoregressive Visual Generation", arXiv:2502.20388; the number as in generative.md 2.7, from a
third-party summary consistent with the abstract). That number is with MAR's KL-16 (rFID 0.87); a tokax
KL-16 without LPIPS reconstructs worse and bounds the FID from below. FID needs Inception weights: score
samples.npz with an external FID tool. No tokax number yet.

Arguments (`:key=value,flag`): tokenizer (the tokenizer run's workdir; default /tmp/imagenet_kl16), entity
(cell, patch, subsample, scale, image; default cell), entity_size (default 8 for cells / 2 for subsample;
4 in runlocal), runlocal (a 1+1-block model for a few CPU steps on the runlocal tokenizer: 16 px images,
an 8 x 8 x 16 latent; in the tests on tfds.testing.mock_data).
"""
import ml_collections

from tokax.train.config_utils import parse_arg

IMAGE_SIZE = 256
DEFAULT_SIZE = {"cell": 8, "subsample": 2}


def preprocess(size: int, *, flip: bool) -> str:
  return f"decode|resize_small({size})|central_crop({size})|{'flip_lr|' if flip else ''}value_range(0, 1)"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, tokenizer="/tmp/imagenet_kl16", entity="cell", entity_size=0, runlocal=False)
  config = ml_collections.ConfigDict()
  config.task = "xar"
  config.seed = 0
  optional_int = lambda: ml_collections.config_dict.placeholder(int)
  config.data = dict(name="tfds:imagenet2012", train_split="train", image_size=IMAGE_SIZE, num_train=optional_int(),
                     num_classes=optional_int(), seed=0, data_dir=ml_collections.config_dict.placeholder(str),
                     preprocess=preprocess(IMAGE_SIZE, flip=True), preprocess_eval=preprocess(IMAGE_SIZE, flip=False),
                     num_threads=16, num_workers=0)
  # name "tokenizer": the run in `workdir`; ema: its EMA weights; sample: posterior samples in training (False:
  # the mean); scale: None reads the run's recorded latent scale; step: None is its latest checkpoint.
  config.latent = dict(name="tokenizer", workdir=arg.tokenizer, ema=True, sample=True,
                       scale=ml_collections.config_dict.placeholder(float), step=optional_int())
  default_size = DEFAULT_SIZE.get(arg.entity, 0) if not arg.runlocal else {"cell": 4}.get(arg.entity, 2)
  config.model = dict(
      entity=arg.entity, entity_size=arg.entity_size or default_size, scales=(),
      width=768, encoder_depth=8, decoder_depth=8, num_heads=12, mlp_ratio=4.0, dropout=0.1, attn_dropout=0.1,
      dtype="bfloat16", attention="auto")
  config.teacher_forcing = False
  config.label_drop = 0.1

  config.batch_size = 2048
  config.total_steps = optional_int()
  config.total_epochs = 800.0
  config.warmup_fraction = 100 / 800
  config.decay_fraction = 200 / 800
  config.lr = 4e-4
  config.end_lr = 1e-5
  config.b1, config.b2 = 0.9, 0.96
  config.weight_decay = 0.02
  config.grad_clip_norm = 1.0
  config.ema_decay = 0.9999

  config.sample = dict(num_steps=40, cfg=2.7, cfg_schedule="linear", method="em")
  config.log_every_steps = 100
  config.checkpoint_every_steps = 5000
  config.keep_checkpoints = 2
  config.progress_bar = True

  # Parallelism, as in configs/digits_vit.py (the shared trainer loop): data parallel over every device.
  config.mesh = dict(data=-1, model=1)
  config.sharding = dict(preset="replicated", rules=())
  config.distributed = False

  if arg.runlocal:
    size = 16
    config.data.update(image_size=size, num_train=32, num_threads=2, preprocess=preprocess(size, flip=True),
                       preprocess_eval=preprocess(size, flip=False))
    config.model.update(width=32, encoder_depth=1, decoder_depth=1, num_heads=2, dropout=0.0, attn_dropout=0.0,
                        dtype="float32")
    config.batch_size = 8
    config.total_steps, config.total_epochs = 4, None
    config.log_every_steps = 2
    config.checkpoint_every_steps = 0
    config.ema_decay = 0.9
    config.sample.update(num_steps=2, method="euler")
    config.progress_bar = False
  return config
