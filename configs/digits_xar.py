r"""A tiny xAR on scikit-learn's digits (32 px, 4x4 grey pixel patches: an 8 x 8 x 16 token grid).

The setting of generative.md 6.2: D=256, 3 + 3 blocks, 4 heads (7.3M parameters), next-cell 4x4
(4 AR steps, mirroring the official 16 x 16 latent in 8 x 8 cells), Noisy Context Learning,
AdamW(0.9, 0.96), wd 0.02, lr 4e-4 with 10% warmup, constant, cosine over the last 20%, EMA 0.999,
label drop 0.1.

  python -m tokax.train --config configs/digits_xar.py --workdir /tmp/xar_cell
  python -m tokax.train --config configs/digits_xar.py:entity=image --workdir /tmp/xar_image
  python -m tokax.train --config configs/digits_xar.py:entity=cell,teacher_forcing --workdir /tmp/xar_tf
  python -m tokax.train --config configs/digits_xar.py:runlocal --workdir /tmp/xar_local
  python -m tokax.sample --workdir /tmp/xar_cell --num 1000 --cfg 2.0

Arguments (`:key=value,flag`): entity (patch, cell, subsample, scale, image; default cell),
entity_size (cell side / subsample stride, default 4 / 2), teacher_forcing (the ablation),
runlocal (a 1+1-block model for a few CPU steps).
Expected on an H100 (a PyTorch prototype of the same setting, 3,000 steps): next-cell NCL about
78% conditional accuracy / FD 31 at cfg 2 (tokax numbers: BENCHMARKS.md once the lead runs
tokax/bench/xar_entities.py).
"""
import ml_collections

from tokax.train.config_utils import parse_arg

DEFAULT_SIZE = {"cell": 4, "subsample": 2}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, entity="cell", entity_size=0, teacher_forcing=False, runlocal=False)
  config = ml_collections.ConfigDict()
  config.task = "xar"
  config.seed = 0
  optional_int = ml_collections.config_dict.placeholder(int)
  config.data = dict(name="digits", image_size=32, num_train=optional_int, seed=0)
  config.latent = dict(name="patch", patch=4)
  config.model = dict(
      entity=arg.entity, entity_size=arg.entity_size or DEFAULT_SIZE.get(arg.entity, 0), scales=(),
      width=256, encoder_depth=3, decoder_depth=3, num_heads=4, mlp_ratio=4.0, dropout=0.0, attn_dropout=0.0,
      dtype="float32", attention="auto")
  config.teacher_forcing = arg.teacher_forcing
  config.label_drop = 0.1

  config.batch_size = 128
  config.total_steps = 3000
  config.total_epochs = ml_collections.config_dict.placeholder(float)
  config.warmup_fraction = 0.1
  config.decay_fraction = 0.2
  config.lr = 4e-4
  config.end_lr = 1e-5
  config.b1, config.b2 = 0.9, 0.96
  config.weight_decay = 0.02
  config.grad_clip_norm = 1.0
  config.ema_decay = 0.999

  config.sample = dict(num_steps=25, cfg=2.0, cfg_schedule="linear", method="euler")
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2
  config.progress_bar = True

  # Parallelism, as in configs/digits_vit.py (the shared trainer loop): mesh axes and sizes (-1: the
  # remaining devices), parameter placement by preset ("replicated", "fsdp"; the "tensor" presets name
  # ViT layers) after any (regex, spec) rules; distributed=True calls jax.distributed.initialize().
  config.mesh = dict(data=-1, model=1)
  config.sharding = dict(preset="replicated", rules=())
  config.distributed = False

  if arg.runlocal:
    config.model.update(width=32, encoder_depth=1, decoder_depth=1, num_heads=2)
    config.data.num_train = 64
    config.batch_size = 16
    config.total_steps = 4
    config.log_every_steps = 2
    config.checkpoint_every_steps = 0
    config.sample.num_steps = 2
  return config
