r"""A ViT trained from scratch on glyphs (tokax.data.glyphs): 32 character classes rendered from matplotlib's
fonts on crops of the bundled photos, every training image new (no pool to memorise).

  python -m tokax.train --config configs/glyphs_vit.py --workdir /tmp/glyphs_vit               # ViT-Ti/16, 224 px, GPU
  python -m tokax.train --config configs/glyphs_vit.py:variant=S/16 --workdir /tmp/glyphs_vit_s16 --config.lr=5e-4
  python -m tokax.train --config configs/glyphs_vit.py:pool=gap,image_size=112 --workdir /tmp/glyphs_gap  # mean-pooled
  python -m tokax.train --config configs/glyphs_vit.py:runlocal --workdir /tmp/glyphs_local      # CPU, seconds

Default (GPU): ViT-Ti/16 at 224 px (196 patch tokens + cls, mostly background), bfloat16, batch 256,
10,000 steps = 2.56M images, each a different rendering (num_train = 2.56M: one epoch, so no image is seen
twice), AdamW lr 1e-3 with 1,000 warm-up steps and cosine decay, weight decay 0.05, label smoothing 0.1,
random shifts of up to 8 px (no flips: they mirror letters). ~4.5 min of training at ~10k images/s on one
H100. The images are rendered on the fly by the input pipeline (14 worker processes): nothing is pre-generated.
Rendering takes ~1.0 ms of CPU per 224 px image on one core (scripts/glyphs_generation_speed.py, measured on a
loaded 2-core CPU), so 14 workers should give ~12-14k images/s (extrapolated; not yet measured on the GPU host:
if the GPU waits for data, compare train/images_per_s with that script's --pipeline_workers 14). Val and test
are fixed sets of 10,000 images each, rendered again at each evaluation pass.

Data goes through tokax.data.pipeline (config.data.preprocess set): GlyphSource yields uint8 images at
model.image_size, which the trainer reads as 0..255 on the device; "resize(S)" is a no-op at that size.
"glyphs:distractors=3" as data.name adds up to 3 smaller, fainter non-class characters per image.

ViT-S/16 (`variant=S/16`) runs the same recipe, 10,000 steps (~8.5 min at ~5,000 images/s on one H100;
scripts/device/glyphs_s16.sh). Glyphs have a long plateau before a model finds the glyph: 3,000 steps of
S/16 at lr 8e-4 reached only 56.7% test top-1 (2026-12-07, H100), still climbing; not yet run to 10,000. `pool=gap` classifies the mean of the patch tokens (fc_norm, as
timm's global_pool="avg") and keeps the class token, whose attention row FasterVLM ranks by: the
pooled-feature model on which post-encoder selections (DivPrune, FasterVLM, random) change the prediction.

Arguments (`:key=value,flag`): variant ("Ti/16" or "S/16"), image_size (0: 224), pool ("cls" or "gap"),
distractors (0..4), runlocal (a few steps of a tiny model on CPU, for tests).
"""
import ml_collections

from tokax.train.config_utils import parse_arg

_SIZES = {"Ti/16": dict(width=192, depth=12, heads=3), "S/16": dict(width=384, depth=12, heads=6)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant="Ti/16", image_size=0, pool="cls", distractors=0, runlocal=False)
  if arg.variant not in _SIZES:
    raise ValueError(f"config argument: variant must be one of {sorted(_SIZES)}; got {arg.variant!r}")
  if arg.pool not in ("cls", "gap"):
    raise ValueError(f"config argument: pool must be 'cls' or 'gap'; got {arg.pool!r}")
  size = _SIZES[arg.variant]
  image_size = arg.image_size or 224
  config = ml_collections.ConfigDict()
  config.seed = 0

  name = f"glyphs:distractors={arg.distractors}" if arg.distractors else "glyphs"
  config.data = dict(name=name, num_train=2_560_000, num_val=10_000, num_test=10_000, seed=0,
                     preprocess=f"resize({image_size})", preprocess_eval=f"resize({image_size})",
                     num_threads=8, num_workers=14)
  config.augment = dict(max_shift=8)

  # ViT(**fields) (tokax.train.model.MODELS[name]); num_classes: the data's (32).
  config.model = dict(
      name="vit", variant=arg.variant, image_size=image_size, pool=arg.pool, drop_path=0.0, dtype="bfloat16",
      width=size["width"], depth=size["depth"], num_heads=size["heads"], mlp_dim=4 * size["width"],
      attention="auto", interpret=False)
  # A tokax.reduction.build spec (trained dense; reductions are applied at evaluation): --config.reduction=tome:8.
  config.reduction = "none"

  config.batch_size = 256
  config.total_steps = 10_000
  config.total_epochs = ml_collections.config_dict.placeholder(float)
  config.warmup_steps = 1_000
  config.lr = 1e-3
  config.weight_decay = 0.05
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.1

  # Parallelism (tokax.train.sharding), as configs/cluttered_digits_vit.py.
  config.mesh = dict(data=-1, model=1)
  config.sharding = dict(preset="replicated", rules=())
  config.distributed = False

  config.log_every_steps = 100
  config.eval_every_steps = 2_500
  config.checkpoint_every_steps = 2_500
  config.keep_checkpoints = 2
  config.eval_batch_size = 500
  config.progress_bar = False

  if arg.runlocal:
    image_size = arg.image_size or 32
    config.model.update(image_size=image_size, variant="Ti/8", width=32, depth=1, num_heads=2, mlp_dim=64,
                        dtype="float32")
    config.data.update(num_train=64, num_val=32, num_test=32, preprocess=f"resize({image_size})",
                       preprocess_eval=f"resize({image_size})", num_threads=2, num_workers=0)
    config.augment.max_shift = 2
    config.batch_size = 16
    config.total_steps = 3
    config.warmup_steps = 1
    config.log_every_steps = 1
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_batch_size = 32
    config.progress_bar = True
  return config
