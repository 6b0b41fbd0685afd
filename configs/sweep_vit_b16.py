r"""Speed sweep: every reduction method at three strengths on ViT-B/16 at 224 px, random weights.

The speed half of BENCHMARKS.md's reduction-zoo tables (an H100, bf16, batch 256):

  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false \
    python -m tokax.bench.sweep --config configs/sweep_vit_b16.py --workdir /tmp/sweep_b16

Strengths: tome / mctf / dtome r (tokens merged per block), pitome the fraction kept per block,
evit the keep rate at blocks 3, 6, 9, slim SiT's keeping ratio per stage (random slimming weights:
speed only). Post-encoder reducers keep a fraction of the 196 patch tokens (dct: of each side).
Arguments: only (methods to keep, "+"-separated, e.g. only=tome+mctf; post-encoder ones too),
runlocal (ViT-Ti/16 at 64 px, batch 4, a few calls: a CPU smoke run).
"""
import ml_collections

from tokax.train.config_utils import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, only="", runlocal=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = dict(variant="B/16", image_size=224, num_classes=1000)
  config.checkpoint = dict(config="", workdir="")  # no checkpoint: random weights
  config.eval_split = "test"
  config.calibration_split = "val"
  config.dtype = "bfloat16"
  config.attention = "auto"  # cuDNN flash attention where no method needs the probabilities
  config.matching = "xla"  # ToMe / PiToMe / DToMe bipartite matching: "xla" or "pallas" (the fused kernel)
  config.gelu_approximate = True  # XLA fuses the tanh GELU into the matmul; exact erf costs ~20% (BENCHMARKS.md)
  config.batch_size = 256
  config.warmup = 5
  config.repeats = 20
  config.eval_batch_size = 250
  config.calibration_batch_size = 64
  config.calibration_batches = 4
  config.methods = dict(tome=[8, 12, 16], pitome=[0.95, 0.925, 0.9], mctf=[8, 12, 16], evit=[0.9, 0.7, 0.5],
                        dtome=[8, 12, 16], slim=[0.7, 0.5])
  config.overhead = "middle"  # plan / score cost rows: "middle" strength, "all" or "none"
  config.post_methods = dict(divprune=[0.5, 0.1], todre=[0.5, 0.1], dct=[0.5, 0.25], fastervlm=[0.5, 0.1])
  if arg.runlocal:
    config.model = dict(variant="Ti/16", image_size=64, num_classes=10)
    config.dtype = "float32"
    config.batch_size = 4
    config.warmup = 1
    config.repeats = 2
    config.calibration_batch_size = 4
    config.calibration_batches = 1
    config.methods = dict(tome=[2, 4], pitome=[0.9], mctf=[2], evit=[0.7], dtome=[2], slim=[0.5])
    config.post_methods = dict(divprune=[0.5], todre=[0.5], dct=[0.5], fastervlm=[0.5])
  if arg.only:
    keep = set(arg.only.split("+"))
    config.methods = {k: v for k, v in config.methods.items() if k in keep}
    config.post_methods = {k: v for k, v in config.post_methods.items() if k in keep}
  return config
