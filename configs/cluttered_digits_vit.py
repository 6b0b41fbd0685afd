r"""A small ViT trained from scratch on cluttered digits at 112 px, patch 8 (196 patch tokens + cls).

The main job's model (scripts/main_job.py): small enough to train on a 2-core CPU in a few
minutes, with enough tokens (mostly background) for token merging to matter.

  python -m tokax.train --config configs/cluttered_digits_vit.py --workdir /tmp/cluttered_vit
  python -m tokax.train --config configs/cluttered_digits_vit.py:runlocal --workdir /tmp/cluttered_vit_local
  python -m tokax.train --config configs/cluttered_digits_vit.py:width=128,depth=6 --workdir /tmp/cv \
      --config.total_steps=3000

Expected (default): val accuracy 0.17 / 0.24 / 0.26 at steps 400 / 800 / 1200 and test accuracy
0.296 (chance: 0.10), bit-identical on reruns; training takes about 5.5 min at ~120 images/s on an
idle 2-core CPU (about twice that when other jobs share the cores). Deliberately small: a ViT learns
this task slowly from scratch (at 1000 steps: 0.24 test; width 128 learns no faster per image).
GPU mode (`:gpu`, issue 4's evidence run, scripts/device/cluttered_digits_evidence.sh): ViT-S/8 at 112 px
(width 384, depth 12, 6 heads, MLP 1536; 196 patch tokens + cls, the token count of ViT-S/16 at 224), bfloat16,
batch 128, 3,000 steps (384k images: ~10 epochs of 40,000 training images) with lr 1e-3, 300 warm-up steps,
weight decay 0.05, label smoothing 0.1. Estimated 50-65 s of training alone on an H100 (ViT-S, 197 tokens,
~6-8k images/s in bf16), about 2-2.5 min beside the T2T / ViT-Ti runs; generating the 40k images takes
about 17 s of one host core (0.42 ms each, measured on the 2-core CPU) and 6 GB of host memory (float32).

  python -m tokax.train --config configs/cluttered_digits_vit.py:gpu --workdir /tmp/cd_vit_gpu
  # ViT-Ti/16 at 224 px, the ViT side of the T2T-ViT-7 comparison (configs/cluttered_digits_t2t.py:gpu):
  python -m tokax.train --config configs/cluttered_digits_vit.py:gpu,variant=Ti/16,width=192,depth=12,heads=3,image_size=224 \
      --workdir /tmp/cd_vit_ti16 --config.total_steps=1500 --config.data.num_train=19200

Arguments (`:key=value,flag`): variant (patch size from "<size>/<patch>"; default "Ti/8", "S/8" with gpu),
width, depth, heads (override the variant's; 0: the mode's default), image_size (0: 112), gpu (the GPU recipe
above), runlocal (a few steps of a tiny model, for tests).
"""
import ml_collections

from tokax.train.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant="", width=0, depth=0, heads=0, image_size=0, gpu=False, runlocal=False)
  size = dict(variant="S/8", width=384, depth=12, heads=6) if arg.gpu else dict(variant="Ti/8", width=64, depth=4, heads=2)
  variant, width, depth, heads = (arg[key] or size[key] for key in ("variant", "width", "depth", "heads"))
  config = ml_collections.ConfigDict()
  config.seed = 0

  # 19.2k images (2.9 GB as float32), each seen twice, randomly shifted by up to half a patch.
  config.data = dict(name="cluttered_digits", num_train=19_200, num_val=500, num_test=1000, seed=0)
  config.augment = dict(max_shift=4)

  # ViT(**fields) (tokax.train.model.MODELS[name]); num_classes: the data's when unset.
  config.model = dict(
      name="vit", num_classes=ml_collections.config_dict.placeholder(int), variant=variant,
      image_size=arg.image_size or 112, pool="cls", drop_path=0.0, dtype="float32",
      width=width, depth=depth, num_heads=heads, mlp_dim=4 * width, attention="auto", interpret=False)
  # A tokax.reduction.build spec; a string, so --config.reduction=tome:16 (or evit:0.7, ...) overrides it.
  config.reduction = "none"  # trained dense; ToMe is applied at test.

  config.batch_size = 32
  config.total_steps = 1200
  config.total_epochs = ml_collections.config_dict.placeholder(float)
  config.warmup_steps = 120
  config.lr = 5e-4
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
  config.eval_every_steps = 400
  config.checkpoint_every_steps = 400
  config.keep_checkpoints = 2
  config.eval_batch_size = 250
  config.progress_bar = True

  if arg.gpu:
    # 40k images (6 GB float32 at 112 px, ~17 s to generate), each seen ~10 times.
    config.data.num_train = 40_000
    config.model.dtype = "bfloat16"
    config.batch_size = 128
    config.total_steps = 3000
    config.warmup_steps = 300
    config.lr = 1e-3
    config.label_smoothing = 0.1
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 1000
    config.eval_batch_size = 500
    config.progress_bar = False
  if arg.runlocal:
    config.model.update(image_size=32, width=32, depth=1, num_heads=2, mlp_dim=64)
    config.data.update(num_train=64, num_val=32, num_test=32)
    config.batch_size = 16
    config.total_steps = 3
    config.warmup_steps = 1
    config.log_every_steps = 1
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_batch_size = 32
    if arg.gpu:  # two blocks, so that SiT's gpu,runlocal student (one slimming stage per block) fits this teacher
      config.model.depth = 2
  return config
