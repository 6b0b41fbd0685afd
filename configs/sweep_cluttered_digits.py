r"""Accuracy sweep: every reduction method at three strengths on the ViT trained on cluttered digits.

The accuracy half of BENCHMARKS.md's reduction-zoo tables. Trains configs/cluttered_digits_vit.py
into checkpoint.workdir first unless that holds a finished run, then measures every method off the
shelf on the 1,000 test images:

  python -m tokax.bench.sweep --config configs/sweep_cluttered_digits.py --workdir /tmp/sweep_digits \
      --config.checkpoint.workdir=/tmp/cluttered_vit

The model has 4 blocks of 197 tokens (112 px, patch 8), so strengths are larger per block than on
ViT-B/16 (12 blocks): tome / mctf / dtome r of 16, 32, 48 leave 133, 69, 27 tokens (ToMe).
GPU mode (`:gpu`, issue 4's evidence, scripts/device/cluttered_digits_evidence.sh): the checkpoint is
configs/cluttered_digits_vit.py:gpu (ViT-S/8, 12 blocks of 197 tokens, bf16), evaluated as it stands
(checkpoint.train=False: a run stopped early by its time limit is measured at its last checkpoint);
ToMe at r = 4, 8, 12 (149, 101, 53 tokens) with proportional attention (ToMe's default) and at r = 8, 12
without (tome_noprop), every other method at 1-2 strengths (16 rows: ~10 s each on a GPU, mostly compiles);
the fine-tuned runs go in as trained rows, measured first:

  python -m tokax.bench.sweep --config configs/sweep_cluttered_digits.py:gpu --workdir /tmp/sweep_gpu \
      --config.checkpoint.workdir=/tmp/cd_vit_gpu --config.trained.sit.workdir=/tmp/cd_sit_gpu \
      --config.trained.mctf.workdir=/tmp/cd_mctf_gpu --config.trained.deit.workdir=/tmp/cd_deit_gpu

config.trained: name -> dict(workdir) of fine-tuning runs (an empty workdir skips the row; each run is
rebuilt from its own config.json). With checkpoint.train=False the checkpoint's run is too (checkpoint.config
then only says which config trained it).
Arguments: gpu, runlocal (the trainer's runlocal model and data: a CPU smoke run; with gpu, the gpu
configs' runlocal versions).
"""
import ml_collections

from tokax.train.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, gpu=False, runlocal=False, only="")
  flags = ",".join(name for name in ("gpu", "runlocal") if arg[name])
  suffix = f":{flags}" if flags else ""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = dict()  # from the checkpoint's training config
  config.checkpoint = dict(config="configs/cluttered_digits_vit.py" + suffix, workdir="/tmp/cluttered_vit",
                           train=True)  # train: train (or finish) the run first; False: evaluate its last checkpoint
  config.eval_split = "test"
  config.calibration_split = "val"  # DToMe thresholds are calibrated on validation images, never test
  config.dtype = "float32"
  config.attention = "auto"
  config.matching = "xla"  # ToMe / PiToMe / DToMe bipartite matching: "xla" or "pallas" (the fused kernel)
  config.gelu_approximate = False  # as trained
  config.batch_size = 256
  config.warmup = 3
  config.repeats = 10
  config.eval_batch_size = 250
  config.calibration_batch_size = 100
  config.calibration_batches = 5
  config.methods = dict(tome=[16, 32, 48], pitome=[0.9, 0.8, 0.7], mctf=[16, 32, 48], evit=[0.8, 0.6, 0.4],
                        dtome=[16, 32, 48], slim=[0.7, 0.5])
  config.overhead = "none"
  config.post_methods = dict()
  # The fine-tunes of configs/cluttered_digits_{sit,mctf,deit_distill}.py (with the same flags).
  config.trained = dict(sit=dict(workdir=""), mctf=dict(workdir=""), deit=dict(workdir=""))
  if arg.gpu:
    config.checkpoint.update(workdir="/tmp/cd_vit_gpu", train=False)
    config.dtype = "bfloat16"
    config.methods = dict(tome=[4, 8, 12], tome_noprop=[8, 12], mctf=[8, 12], pitome=[0.95, 0.9],
                          evit=[0.7, 0.5], dtome=[12])
    config.eval_batch_size = 500
  if arg.runlocal:
    config.batch_size = 8
    config.warmup = 1
    config.repeats = 2
    config.eval_batch_size = 16
    config.calibration_batch_size = 16
    config.calibration_batches = 1
    config.methods = dict(tome=[4], tome_noprop=[4], pitome=[0.9], mctf=[4], evit=[0.6], dtome=[4], slim=[0.5])
  if arg.only:  # methods to keep, "+"-separated (trained rows stay; empty their workdirs to drop them)
    keep = set(arg.only.split("+"))
    config.methods = {k: v for k, v in config.methods.items() if k in keep}
    config.post_methods = {k: v for k, v in config.post_methods.items() if k in keep}
  return config
