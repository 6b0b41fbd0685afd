r"""A KL-16 autoencoder on ImageNet at 256 px (MAR's KL-16 tokenizer): a 16 x 16 x 16 latent for xAR.

  python -m tokax.train --config configs/imagenet_tokenizer.py --workdir /tmp/imagenet_kl16
  python -m tokax.train --config configs/imagenet_tokenizer.py:runlocal --workdir /tmp/imagenet_kl16_local
  python -m tokax.train.evaluate_tokenizer --workdir /tmp/imagenet_kl16
  then xAR on its latents: configs/imagenet_xar.py:tokenizer=/tmp/imagenet_kl16

Data: tfds:imagenet2012 prepared in array_record format (`tfds build imagenet2012
--file_format=array_record`, the manual download in ~/tensorflow_datasets/downloads/manual); train
on random 256 crops of the images resized to 256 on the short side, with flips; validation on the
first 1,000 val images, centre-cropped (val/psnr, val/ssim every 10k steps and at the end).

Model (the real size): f = 16 (channel_multipliers (1, 1, 2, 2, 4)), 16 latent channels, 128 filters,
2 residual blocks per level: 256 x 256 x 3 -> 16 x 16 x 16, as MAR's KL-16 (LTH14/mar models/vae.py,
AutoencoderKL(embed_dim=16, ch_mult=(1, 1, 2, 2, 4)); its encoder's last conv has 2 x 16 channels: z_channels 32).
Objective as LDM's KL autoencoders, which MAR's is trained with: L1 + KL (weight 1e-6) + PatchGAN hinge
loss with the adaptive weight (disc_weight 0.5, from step 50,001), Adam(0.5, 0.9). Batch 256 for 400k
steps (80 epochs), lr 4e-4 (LDM's 4.5e-6 per image of the batch would be 1.15e-3 here), 5k warmup, cosine
to 10%; weight EMA 0.9999 (what the evaluation, the latent scale and xAR use).
Published target: MAR's KL-16 reconstructs ImageNet 256 val at rFID 0.87 (Li et al., "Autoregressive Image
Generation without Vector Quantization", arXiv:2406.11838, its tokenizer comparison). Deliberate
differences that keep this short of it: no LPIPS term (tokax ships no LPIPS weights; set
config.loss.perceptual='pkg.module:factory' and perceptual_weight=1.0, LDM's, to add one), no attention
blocks in the encoder / decoder (tokax's KLAutoencoder has none; MAR's has them at 16 x 16), GroupNorm
in the discriminator; tokax reports PSNR / SSIM, not rFID (no Inception weights offline). No tokax
number yet.

The final checkpoint records the latent scale (1 / std of the EMA model's latent samples of 256
training images; MAR's constant is 0.2325), which configs/imagenet_xar.py reads.
Arguments (`:key=value,flag`): gan (default on), runlocal (a few steps of a tiny model at 16 px, f = 2, on a
CPU; in the tests on tfds.testing.mock_data).
"""
import ml_collections

from tokax.train.config_utils import parse_arg

IMAGE_SIZE = 256


def preprocess(size: int, *, train: bool) -> str:
  crop = f"random_crop({size})|flip_lr" if train else f"central_crop({size})"
  return f"decode|resize_small({size})|{crop}|value_range(0, 1)"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, gan=True, runlocal=False)
  config = ml_collections.ConfigDict()
  config.task = "tokenizer"
  config.seed = 0

  optional_int = lambda: ml_collections.config_dict.placeholder(int)
  config.data = dict(name="tfds:imagenet2012", train_split="train", val_split="validation", num_train=optional_int(),
                     num_val=1000, seed=0, data_dir=ml_collections.config_dict.placeholder(str),
                     preprocess=preprocess(IMAGE_SIZE, train=True), preprocess_eval=preprocess(IMAGE_SIZE, train=False),
                     num_threads=16, num_workers=0)

  config.model = dict(image_size=IMAGE_SIZE, filters=128, channel_multipliers=(1, 1, 2, 2, 4), num_res_blocks=2,
                      z_channels=32, norm_groups=32, dtype="float32")
  config.quantizer = dict(name="kl", latent_dim=16, kl_weight=1e-6, kwargs={})
  config.loss = dict(reconstruction="l1", gan="hinge" if arg.gan else "none", disc_weight=0.5, adaptive_weight=True,
                     disc_start=50_001, perceptual="", perceptual_weight=0.0, r1_weight=0.0)
  config.discriminator = dict(ndf=64, num_layers=3, norm="group", norm_groups=32)

  config.batch_size = 256
  config.total_steps = 400_000
  config.total_epochs = ml_collections.config_dict.placeholder(float)
  config.warmup_steps = 5_000
  config.lr = 4e-4
  config.end_lr_fraction = 0.1
  config.b1, config.b2 = 0.5, 0.9
  config.weight_decay = 0.0
  config.grad_clip_norm = 1.0
  config.disc_lr = 1e-4
  config.ema_decay = 0.9999

  config.log_every_steps = 100
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 10_000
  config.keep_checkpoints = 2
  config.eval_batch_size = 64
  config.progress_bar = True

  # Parallelism, as in configs/digits_vit.py: data parallel over every device (FSDP: preset "fsdp").
  config.mesh = dict(data=-1, model=1)
  config.sharding = dict(preset="replicated", rules=())
  config.distributed = False

  if arg.runlocal:
    size = 16
    config.data.update(num_train=32, num_val=16, num_threads=2, preprocess=preprocess(size, train=True),
                       preprocess_eval=preprocess(size, train=False))
    config.model.update(image_size=size, filters=16, channel_multipliers=(1, 2), num_res_blocks=1, z_channels=16,
                        norm_groups=8)
    config.discriminator.update(ndf=8, num_layers=1, norm_groups=8)
    config.loss.disc_start = 1
    config.batch_size = 8
    config.total_steps = 3
    config.warmup_steps = 1
    config.ema_decay = 0.9
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 0
    config.eval_batch_size = 16
    config.progress_bar = False
  return config
