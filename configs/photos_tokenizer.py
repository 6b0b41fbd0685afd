r"""A visual tokenizer on 64x64 crops of scikit-image's bundled photos: 8x8 tokens (stride 8), L1 + PatchGAN.

  python -m tokax.train --config configs/photos_tokenizer.py:quantizer=lfq --workdir /tmp/tok_photos_lfq
  python -m tokax.train --config configs/photos_tokenizer.py:quantizer=kl,runlocal --workdir /tmp/tok_local
  python -m tokax.train.evaluate_tokenizer --workdir /tmp/tok_photos_lfq --workdir /tmp/tok_photos_kl

Training crops come from 10 photos; val (coffee) and test (astronaut, chelsea) photos are held
out, as are the textures and text images that the evaluation uses (tokax.data.offline.PHOTO_SPLITS).
Arguments (`:key=value,flag`): quantizer (vq, vq_ema, fsq, lfq or kl; default fsq), gan (default
on; `gan=false` for reconstruction only), runlocal (a few steps of a tiny model on a CPU).
Every discrete variant is at 8 bits per token (K = 256; FSQ [8, 6, 5]); the KL autoencoder
(4 latent channels) is the continuous upper reference. No perceptual loss (no offline weights);
set config.loss.perceptual='pkg.module:factory' to add one of your own.
"""
import ml_collections

from tokax.train.config_utils import parse_arg

# Per quantizer: (latent_dim, fields of its tokax.tokenizers.quantizers class; their `dim` follows latent_dim).
QUANTIZER_SETTINGS = {
    "vq": (32, dict(codebook_size=256, commitment_cost=0.25)),
    "vq_ema": (32, dict(codebook_size=256, commitment_cost=0.25, decay=0.99, eps=1e-5, dead_code_threshold=1.0)),
    "fsq": (3, dict(levels=(8, 6, 5))),
    "lfq": (8, dict(commitment_weight=0.25, entropy_weight=0.1)),
    "kl": (4, dict()),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, quantizer="fsq", gan=True, runlocal=False)
  if arg.quantizer not in QUANTIZER_SETTINGS:
    raise ValueError(f"config argument: quantizer must be one of {sorted(QUANTIZER_SETTINGS)}; got {arg.quantizer!r}")
  latent_dim, kwargs = QUANTIZER_SETTINGS[arg.quantizer]
  config = ml_collections.ConfigDict()
  config.task = "tokenizer"
  config.seed = 0

  config.data = dict(name="photo_crops", num_train=20000, num_val=256, num_test=512, seed=0)

  config.model = dict(image_size=64, filters=64, channel_multipliers=(1, 1, 2, 4), num_res_blocks=2, z_channels=128,
                      norm_groups=32, dtype="float32")
  config.quantizer = dict(name=arg.quantizer, latent_dim=latent_dim, kl_weight=1e-6, kwargs=kwargs)
  config.loss = dict(reconstruction="l1", gan="hinge" if arg.gan else "none", disc_weight=0.8, adaptive_weight=True,
                     disc_start=2000, perceptual="", perceptual_weight=0.0, r1_weight=0.0)
  config.discriminator = dict(ndf=64, num_layers=3, norm="group", norm_groups=32)

  config.batch_size = 128
  config.total_steps = 4000
  config.total_epochs = ml_collections.config_dict.placeholder(float)
  config.warmup_steps = 200
  config.lr = 4e-4
  config.end_lr_fraction = 0.1
  config.b1, config.b2 = 0.5, 0.9
  config.weight_decay = 0.0
  config.grad_clip_norm = 1.0
  config.disc_lr = 1e-4
  config.ema_decay = 0.999

  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2
  config.eval_batch_size = 128
  config.progress_bar = True

  # Parallelism, as in configs/digits_vit.py (the shared trainer loop): mesh axes and sizes (-1: the
  # remaining devices), parameter placement by preset ("replicated", "fsdp"; the "tensor" presets name
  # ViT layers) after any (regex, spec) rules; distributed=True calls jax.distributed.initialize().
  config.mesh = dict(data=-1, model=1)
  config.sharding = dict(preset="replicated", rules=())
  config.distributed = False

  if arg.runlocal:
    config.model.update(filters=16, channel_multipliers=(1, 2), num_res_blocks=1, z_channels=16, norm_groups=8)
    config.discriminator.update(ndf=8, num_layers=2, norm_groups=8)
    config.data.update(num_train=32, num_val=16, num_test=16)
    config.model.image_size = 32
    config.loss.disc_start = 1
    config.batch_size = 8
    config.total_steps = 3
    config.warmup_steps = 1
    config.log_every_steps = 1
    config.eval_every_steps = 2
    config.eval_batch_size = 16
  return config
