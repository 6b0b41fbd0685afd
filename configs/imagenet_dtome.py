r"""DToMe (DyMU, Wang et al., NeurIPS 2025) on DeiT-S: thresholds calibrated on images, no training; for tokax.evaluate.

DyMU's DToMe is training-free: its "recipe" is threshold finding (MikeWangWZHL/dymu threshold_finding.sh ->
open_clip_train/threshold_finder.py at c57d75a): the model runs in training mode (batch-level merging) over
calibration images in batches of 64 per GPU, and each layer's threshold is the running mean of the per-batch
thresholds; inference then merges, per image, every edge above its layer's threshold. tokax does the same with
tokax.reduction.calibrate_dtome, which `python -m tokax.evaluate` runs on its first --calibration_batches
batches before measuring the row. So this is a tokax.evaluate config, not a training one:

  python -m tokax.evaluate --config configs/imagenet_dtome.py --out /runs/dtome_deit_s \
      --config.data_dir=/data/tensorflow_datasets
  # a DeiT-S you trained: a workdir of configs/imagenet_deit.py (its own eval preprocessing and data)
  python -m tokax.evaluate --config configs/imagenet_dtome.py --model /runs/deit_s --out /runs/dtome_mine
  # CPU, seconds (tests/train/test_recipes.py, on the runlocal run of configs/imagenet_deit.py)
  python -m tokax.evaluate --config configs/imagenet_dtome.py:runlocal --model /tmp/deit_local --out /tmp/dtome_local

Target: none published. DyMU reports VLM benchmarks (LLaVA-1.5 / LLaVA-OneVision with CLIP / SigLIP
encoders), no ImageNet-1k top-1 for a DeiT; the table's rows put DToMe beside ToMe at the same average token
budget (r = 13 a layer: 197 -> 41 tokens over 12 blocks) and dense DeiT-S (79.8, the DeiT paper; 79.856 in
timm's results-imagenet.csv for these weights).

Recipe (each line is a field of this config and its value, checked against get_config() by
tests/train/test_recipes.py):
  model = 'pretrained:deit_small_patch16_224.fb_in1k'
  data = 'tfds:imagenet2012:validation'
  batch_size = 64
  calibration_batches = 64
  reductions = ('tome:13', 'dtome:13')

- batch 64: DyMU's per-GPU threshold-finding batch (threshold_finding.sh BATCH_SIZE=64): the batch-level merge
  takes the top r x 64 edges of each batch, so the batch size is part of the thresholds;
- dtome:13: DToMeCalibration(r=13), r_schedule's "constant" split of r_total = 13 x 12 (DyMU's configs name
  the output length, e.g. ViT-L-14-336-tome-72out; for DeiT-S 197 - 156 = 41 tokens); proportional attention
  and the (size + 1e-4) division of the calibration merge as the official code.

Deliberate difference: DyMU calibrates on a separate image set (up to 128 x 2000 = 256,000 images of its
JSON list); tokax.evaluate calibrates on the first 64 x 64 = 4,096 images of the evaluated split (their labels
unused), which are also scored. Calibrating on ImageNet's train split instead needs a calibration-data option in
tokax.evaluate (not there yet).

Arguments: runlocal (16 images, batch 8, one calibration batch: the CPU smoke run).
"""
import ml_collections

from tokax.train.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, runlocal=False)
  config = ml_collections.ConfigDict()
  config.model = "pretrained:deit_small_patch16_224.fb_in1k"
  config.data = "tfds:imagenet2012:validation"
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.num_examples = ml_collections.config_dict.placeholder(int)
  config.batch_size = 64
  config.calibration_batches = 64
  config.dtype = "auto"
  config.reductions = ("tome:13", "dtome:13")
  if arg.runlocal:
    config.num_examples = 16
    config.batch_size = 8
    config.calibration_batches = 1
  return config
