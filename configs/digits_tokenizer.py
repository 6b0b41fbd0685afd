r"""A visual tokenizer on scikit-learn's digits at 32 px: 8x8 tokens (stride 4), MSE, no GAN.

  python -m tokax.train --config configs/digits_tokenizer.py:quantizer=fsq --workdir /tmp/tok_digits_fsq
  python -m tokax.train --config configs/digits_tokenizer.py:quantizer=kl,runlocal --workdir /tmp/tok_local
  python -m tokax.train.evaluate_tokenizer --workdir /tmp/tok_digits_fsq --suites digits

Arguments (`:key=value,flag`): quantizer (vq, vq_ema, fsq, lfq or kl; default fsq), gan (add the
PatchGAN hinge loss with the adaptive weight), runlocal (a few steps of a tiny model on a CPU).
All discrete variants are near 8 bits per token (K = 256; FSQ [8, 6, 5] = 240 codes) so their
usage and PSNR compare at matched bits per image (64 tokens x 8 bits). 1000 steps at batch 256
is the setting of the small prototype in the spec (VQ ~11-13% usage without restart, FSQ ~38%,
LFQ ~97-100%, VQ-EMA ~39 dB PSNR); expect a few minutes per variant on one GPU.
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
  arg = parse_arg(arg, quantizer="fsq", gan=False, runlocal=False)
  if arg.quantizer not in QUANTIZER_SETTINGS:
    raise ValueError(f"config argument: quantizer must be one of {sorted(QUANTIZER_SETTINGS)}; got {arg.quantizer!r}")
  latent_dim, kwargs = QUANTIZER_SETTINGS[arg.quantizer]
  config = ml_collections.ConfigDict()
  config.task = "tokenizer"
  config.seed = 0

  # One placeholder per field: a shared FieldReference would tie the three sizes together.
  optional_int = lambda: ml_collections.config_dict.placeholder(int)
  config.data = dict(name="digits", num_train=optional_int(), num_val=optional_int(), num_test=optional_int(), seed=0)

  config.model = dict(image_size=32, filters=64, channel_multipliers=(1, 2, 2), num_res_blocks=2, z_channels=64,
                      norm_groups=32, dtype="float32")
  config.quantizer = dict(name=arg.quantizer, latent_dim=latent_dim, kl_weight=1e-6, kwargs=kwargs)
  config.loss = dict(reconstruction="l2", gan="hinge" if arg.gan else "none", disc_weight=0.8, adaptive_weight=True,
                     disc_start=500, perceptual="", perceptual_weight=0.0, r1_weight=0.0)
  config.discriminator = dict(ndf=32, num_layers=2, norm="group", norm_groups=32)

  config.batch_size = 256
  config.total_steps = 1000
  config.total_epochs = ml_collections.config_dict.placeholder(float)
  config.warmup_steps = 50
  config.lr = 1e-3
  config.end_lr_fraction = 0.1
  config.b1, config.b2 = 0.9, 0.99
  config.weight_decay = 0.0
  config.grad_clip_norm = 1.0
  config.disc_lr = 1e-4
  config.ema_decay = 0.99

  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 0
  config.keep_checkpoints = 2
  config.eval_batch_size = 256
  config.progress_bar = True

  # Parallelism, as in configs/digits_vit.py (the shared trainer loop): mesh axes and sizes (-1: the
  # remaining devices), parameter placement by preset ("replicated", "fsdp"; the "tensor" presets name
  # ViT layers) after any (regex, spec) rules; distributed=True calls jax.distributed.initialize().
  config.mesh = dict(data=-1, model=1)
  config.sharding = dict(preset="replicated", rules=())
  config.distributed = False

  if arg.runlocal:
    config.model.update(filters=16, channel_multipliers=(1, 2), num_res_blocks=1, z_channels=16, norm_groups=8)
    config.discriminator.update(ndf=8, num_layers=1, norm_groups=8)
    config.data.update(num_train=32, num_val=16, num_test=16)
    config.loss.disc_start = 1
    config.batch_size = 8
    config.total_steps = 3
    config.warmup_steps = 1
    config.log_every_steps = 1
    config.eval_every_steps = 2
    config.eval_batch_size = 16
  return config
