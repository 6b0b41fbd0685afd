r"""Off the shelf on ImageNet: timm AugReg weights, dense and every registry method that applies to a classifier at
the strength its paper reports, beside the published top-1 (docs/evaluate_imagenet.md).

  python -m tokax.evaluate --config tokax:imagenet_reductions.py --out /tmp/eval_imagenet
  python -m tokax.evaluate --config tokax:imagenet_reductions.py:num_examples=1000,batch_size=100 \
      --config.data_dir=/data/tensorflow_datasets --out /tmp/eval_imagenet_1k
  python -m tokax.evaluate --config tokax:imagenet_reductions.py:model=vit_small_patch16_224.augreg_in21k_ft_in1k \
      --out /tmp/eval_imagenet_s16

Runtime on ImageNet: not measured (no ImageNet and no hub access where this was written). The work is one
compile and one pass over the split per row (6 rows: each decodes and resizes all 50,000 JPEGs again with
num_threads threads and runs the model on them), dtome's calibration on the first 4 batches, and the images/s
calls.
Measured at tiny size instead, on a shared 2-core CPU: the same config on the 8 images of the tiny tfds dataset
with ViT-Ti/16 (tests/test_evaluate_imagenet.py) took 38 s in tokax.evaluate (the 6 rows' compiles, mostly), and
87-147 s as a whole test while other jobs shared the cores.
The `runlocal` variant (the first 256 images, float32) is a CPU smoke run of the same table.

Model: the checkpoint ToMe's README table used. "As of version 0.4.12 [timm] uses AugReg weights": timm
0.4.12's vit_base_patch16_224 is the AugReg B/16 in21k -> in1k (res 224) .npz, today's
vit_base_patch16_224.augreg_in21k_ft_in1k (the same URL in its pretrained cfg; 84.534% in timm's
results-imagenet.csv vs ToMe's 84.57%). augreg2_in21k_ft_in1k (85.1%) came later and is not ToMe's model.
Weights through tokax.create_model's path (the Hugging Face hub, or offline its cache), preprocessing timm's
eval transform for the tag (pretrained cfg: resize 248 bicubic, center crop 224, mean = std = 0.5).

Rows (PUBLISHED[model] holds ToMe's numbers; the other papers report none for AugReg ViTs off the shelf, so
their paper column is empty and the source says what they do report):
  dense       ToMe README, original acc of the same model
  tome:r      r = 13 for ViT-B/16 and ViT-S/16 (7 for ViT-L/16, 23 at 384), the README's off-the-shelf rows
  pitome      ratio 0.9 (the strongest of scripts/eval_scripts' 0.9 / 0.925 / 0.95 / 0.975, closest to ToMe r=13
              in FLOPs) with the official AugReg patch's margin 0.9 (algo/pitome/patch/aug.py)
  evit:0.7    keep 0.7 at blocks 3, 6, 9 with the fused token (the paper's default)
  mctf        r = 16 on blocks 1-11, the released evaluation config (--mctf_type [16,...], --activate_layer)
  dtome       thresholds calibrated for ToMe's r on the first calibration batches of the eval images
Left out with the reason printed under the table: slim (learned modules) and the post-encoder reducers
(dct, divprune, todre, fastervlm, random), which reduce the tokens a VLM hands its LLM.

Arguments: model (a timm name with a weights tag, default vit_base_patch16_224.augreg_in21k_ft_in1k, or any
--model value), data (default tfds:imagenet2012:validation), num_examples (0: all 50,000), batch_size
(250), dtype (auto: bfloat16 on a GPU / TPU as the papers' half-precision timing, float32 on a CPU),
data_dir (tfds data_dir; default $TFDS_DATA_DIR, else ~/tensorflow_datasets), runlocal.
"""
import ml_collections

from tokax.train.config_utils import parse_arg

DEFAULT_MODEL = "vit_base_patch16_224.augreg_in21k_ft_in1k"
_TOME_README = ("ToMe README (facebookresearch/ToMe af95e4b), 'expected results when using the timm implementation "
                "off-the-shelf on ImageNet-1k val using a V100': timm 0.4.12 AugReg {model}")
# timm name -> (model as ToMe's README names it, original acc %, r, ToMe acc %): the README's off-the-shelf table.
PUBLISHED = {
    "vit_small_patch16_224.augreg_in21k_ft_in1k": ("ViT-S/16", 81.41, 13, 79.30),
    "vit_base_patch16_224.augreg_in21k_ft_in1k": ("ViT-B/16", 84.57, 13, 82.60),
    "vit_large_patch16_224.augreg_in21k_ft_in1k": ("ViT-L/16", 85.82, 7, 84.26),
    "vit_large_patch16_384.augreg_in21k_ft_in1k": ("ViT-L/16 @ 384", 86.92, 23, 86.14),
}
MCTF_LAYERS = tuple(range(1, 12))  # the released --activate_layer [1..11]

NOT_OFF_THE_SHELF = {
    "slim": "SiT's slimming modules are learned: Slim needs a model trained with it (--config.reduction=slim:0.5)",
    "dct": "post-encoder (Fourier-VLM compresses the vision tokens an LLM reads): it passes [CLS] through, so a "
           "[CLS]-pooled classifier's predictions are the dense ones by construction; the paper reports LLaVA "
           "benchmarks with models trained with the compressor, no ImageNet top-1",
    "divprune": "post-encoder (prunes the visual tokens an LLM reads, ratio 0.098 in LLaVA): it keeps [CLS], so a "
                "[CLS]-pooled classifier's predictions are the dense ones; the paper reports VLM benchmarks only",
    "todre": "post-encoder (prunes the visual tokens an LLM reads, 90% in the paper): it keeps [CLS], so a "
             "[CLS]-pooled classifier's predictions are the dense ones; the paper reports VLM benchmarks only",
    "fastervlm": "post-encoder (prunes the visual tokens an LLM reads): it drops [CLS], so the head would read a mean "
                 "of patch tokens it was never trained on; the paper reports LLaVA benchmarks only",
    "random": "post-encoder baseline of DivPrune / FasterVLM (drops [CLS] as FasterVLM does): the same mismatch with "
              "a [CLS] head; the papers report it on VLM benchmarks only",
}


def _model_spec(model: str) -> str:
  """A bare timm name -> "pretrained:<name>" (weights from the Hugging Face hub / cache); any --model value as is."""
  if ":" in model or "/" in model or model.endswith((".npz", ".safetensors", ".pth")):
    return model
  return f"pretrained:{model}"


def rows(model: str) -> list[dict]:
  """[dict(spec, paper=dict(top1, source))]: dense first, each row with its published top-1 (None: not published)."""
  name = model.removeprefix("pretrained:")
  published = PUBLISHED.get(name)
  r = published[2] if published else 13
  if published:
    source = _TOME_README.format(model=published[0])
    dense = dict(top1=published[1], source=f"{source}, original acc")
    tome = dict(top1=published[3], source=f"{source}, r={r}, proportional attention (the timm patch's default)")
  else:
    missing = f"ToMe's README reports no off-the-shelf number for {name}; its rows are {sorted(PUBLISHED)}"
    dense = dict(top1=None, source=missing)
    tome = dict(top1=None, source=missing + f"; r={r} as its ViT-B/16 row")
  return [
      dict(spec="none", paper=dense),
      dict(spec=f"tome:{r}", paper=tome),
      dict(spec="pitome:0.9,m0=0.9", paper=dict(top1=None, source=(
          "PiToMe (NeurIPS 2024; hchautran/PiToMe 550b5de) evaluates ImageNet off the shelf on DeiT-T/S/B and "
          "MAE-B/L/H only (main_ic.py model_dict; ratios 0.9-0.975 in scripts/eval_scripts): no AugReg number. "
          "m0=0.9: its AugReg patch's margin (patch/aug.py, which never sets the bsm schedule and fails with a "
          "KeyError there; the DeiT schedule is used)"))),
      dict(spec="evit:0.7", paper=dict(top1=None, source=(
          "EViT README (youweiliang/evit): keep 0.7 at blocks 3, 6, 9, fused, is 79.5% on DeiT-S *trained* with "
          "EViT; no off-the-shelf or AugReg number"))),
      dict(spec=f"mctf:16,activate_layers={MCTF_LAYERS}", paper=dict(top1=None, source=(
          "MCTF README (mlvlab/MCTF): r=16 on blocks 1-11 is 72.7% / 80.1% on DeiT-T / DeiT-S *fine-tuned* with "
          "MCTF; no off-the-shelf or AugReg number"))),
      dict(spec=f"dtome:{r}", paper=dict(top1=None, source=(
          "DyMU / DToMe (MikeWangWZHL/dymu) reports VLM benchmarks (CLIP towers in LLaVA), no ImageNet top-1; "
          f"calibrated here for ToMe's r={r} on the eval images"))),
  ]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, model=DEFAULT_MODEL, data="tfds:imagenet2012:validation", num_examples=0, batch_size=250,
                  dtype="auto", data_dir="", runlocal=False)
  config = ml_collections.ConfigDict()
  config.model = _model_spec(arg.model)
  config.data = arg.data
  config.data_dir = ml_collections.config_dict.placeholder(str)  # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets
  config.num_examples = ml_collections.config_dict.placeholder(int)  # None: the whole split
  if arg.data_dir:
    config.data_dir = arg.data_dir
  if arg.num_examples:
    config.num_examples = arg.num_examples
  config.batch_size = arg.batch_size
  config.dtype = arg.dtype
  config.num_threads = 16
  config.warmup = 2  # images/s: untimed calls, then timed ones (tokax.evaluate's defaults)
  config.repeats = 5
  config.reductions = rows(config.model)
  config.left_out = dict(NOT_OFF_THE_SHELF)
  if arg.runlocal:
    config.num_examples = arg.num_examples or 256
    config.batch_size = min(arg.batch_size, 32)
    config.dtype = "float32"
    config.num_threads = 2
    config.warmup = 0
    config.repeats = 1
  return config
