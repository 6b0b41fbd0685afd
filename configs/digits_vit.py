r"""A small ViT on scikit-learn's digits, upsampled to 32 px (patch 4: 64 tokens + cls).

The quickest real training run of tokax: about a minute on a 2-core CPU.

  python -m tokax.train --config configs/digits_vit.py --workdir /tmp/digits_vit
  python -m tokax.train --config configs/digits_vit.py:runlocal --workdir /tmp/digits_vit_local
  # 8 devices as a (4, 2) data x model mesh, Megatron-style tensor parallelism over "model":
  python -m tokax.train --config configs/digits_vit.py --workdir /tmp/dv_tp \
      --config.mesh.data=4 --config.mesh.model=2 --config.sharding.preset=tensor
  # on every host of a cluster (TPU pod, SLURM): one process per host, FSDP over all devices
  python -m tokax.train --config configs/digits_vit.py --workdir /shared/dv --config.distributed=True \
      --config.sharding.preset=fsdp

Expected: test accuracy about 0.83 after 400 steps (1,258 training digits), in about a minute.
Arguments (`:key=value,flag`): variant (default "Ti/4"), runlocal (a few steps of a 1-layer model).
"""
import ml_collections

from tokax.train.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant="Ti/4", runlocal=False)
  config = ml_collections.ConfigDict()
  config.seed = 0

  # One placeholder per field: a shared FieldReference would tie the three sizes together.
  optional_int = lambda: ml_collections.config_dict.placeholder(int)
  config.data = dict(name="digits", num_train=optional_int(), num_val=optional_int(), num_test=optional_int(), seed=0)
  config.augment = dict(max_shift=2)

  # ViT(**fields) (tokax.train.model.MODELS[name]); num_classes: the data's when unset. attention: "auto",
  # "xla", "cudnn" or "pallas" (docs/tpu.md); interpret=True runs "pallas" in Pallas' interpreter (CPU checks).
  config.model = dict(
      name="vit", num_classes=optional_int(), variant=arg.variant, image_size=32, pool="gap", drop_path=0.0,
      dtype="float32", width=128, depth=4, num_heads=2, mlp_dim=512, attention="auto", interpret=False)
  # A tokax.reduction.build spec; a string, so --config.reduction=tome:16 (or evit:0.7, ...) overrides it.
  config.reduction = "none"

  config.batch_size = 32
  config.total_steps = 400
  config.total_epochs = ml_collections.config_dict.placeholder(float)
  config.warmup_steps = 40
  config.lr = 1e-3
  config.weight_decay = 0.05
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.0

  # Parallelism (tokax.train.sharding): mesh axes and sizes (-1: the remaining devices), parameter
  # placement by preset ("replicated", "fsdp", "tensor", "fsdp_tensor") after any (regex, spec) rules;
  # distributed=True calls jax.distributed.initialize() (one process per host).
  config.mesh = dict(data=-1, model=1)
  config.sharding = dict(preset="replicated", rules=())
  config.distributed = False

  config.log_every_steps = 50
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 0
  config.keep_checkpoints = 2
  config.eval_batch_size = 128
  config.progress_bar = True

  if arg.runlocal:
    config.model.update(width=32, depth=1, num_heads=2, mlp_dim=64)
    config.data.update(num_train=64, num_val=32, num_test=32)
    config.batch_size = 16
    config.total_steps = 3
    config.warmup_steps = 1
    config.log_every_steps = 1
    config.eval_every_steps = 2
    config.eval_batch_size = 32
  return config
