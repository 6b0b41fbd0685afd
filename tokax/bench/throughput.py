r"""Inference throughput: images/s, median batch time and XLA-counted GFLOPs per image.

  python -m tokax.bench.throughput --variant B/16 --batch 256 --dtype bfloat16 --attention cudnn \
      --reduction none --reduction tome:16 --timm --tome-official /path/to/ToMe --out /tmp/bench.json

Prints a markdown table (one row per model and implementation) and writes the rows as JSON to
--out (and the table beside it, .md). tokax rows use random weights (speed does not depend on
them); with --timm the same architecture is timed in PyTorch (eager and torch.compile) in the
same process, and with --tome-official PATH (a facebookresearch/ToMe checkout) also the official
ToMe patch of that timm model at each tome:r (eager only, as its own benchmark notebook). Each
row is printed as soon as it is measured. Speed claims are ratios between rows of one run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any, Callable

import jax
import jax.numpy as jnp

# The timer and the GFLOPs count live in tokax.bench.measure; imported here for this module's callers.
from tokax.bench.measure import (cast_floating, compiled_flops, forward_gflops_per_image, measure,  # noqa: F401
                                 median_seconds, random_batches, vit_forward_gflops)


# --- PyTorch / timm (imported only with --timm) ------------------------------------------------


def measure_torch(model: Any, batch_shape_nchw: tuple[int, ...], dtype: Any, *, warmup: int, repeats: int) -> dict[str, float]:
  """Times model(images) in inference mode; CUDA events on a GPU, perf_counter on the CPU.

  Returns {"images_per_s", "median_ms"} as measure().
  """
  import torch

  device = next(model.parameters()).device
  generator = torch.Generator(device="cpu").manual_seed(0)
  batches = [torch.rand(batch_shape_nchw, generator=generator).to(device=device, dtype=dtype) for _ in range(3)]
  cuda = device.type == "cuda"
  times = []
  with torch.inference_mode():
    for i in range(warmup):
      model(batches[i % 3])
    if cuda:
      torch.cuda.synchronize()
    for i in range(repeats):
      images = batches[i % 3]
      if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(images)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
      else:
        start_time = time.perf_counter()
        model(images)
        times.append(time.perf_counter() - start_time)
  median = statistics.median(times)
  return {"images_per_s": batch_shape_nchw[0] / median, "median_ms": median * 1e3}


_TIMM_SIZES = {"Ti": "tiny", "S": "small", "M": "medium", "B": "base", "L": "large", "H": "huge", "g": "giant"}


def timm_model_name(variant: str, image_size: int) -> str:
  """"B/16", 224 -> "vit_base_patch16_224" (timm's name for the same architecture)."""
  size, patch = variant.split("/")
  return f"vit_{_TIMM_SIZES[size]}_patch{patch}_{image_size}"


def _import_timm():
  """Imports timm; if torchvision cannot load beside a CPU-only torch, applies tests/torch_compat's fix."""
  try:
    import timm
    return timm
  except RuntimeError:  # "operator torchvision::nms does not exist": see tests/torch_compat.py
    tests = os.path.join(os.path.dirname(__file__), "..", "..", "tests")
    sys.path.insert(0, os.path.abspath(tests))
    import torch_compat
    return torch_compat.import_timm()


# --- command line ---------------------------------------------------------------------------


def block_reduction(spec: str, model: Any, params: Any) -> Any:
  """--reduction SPEC as a block reduction of `model` (tokax.reduction.build); a method that needs
  calibration (dtome) is calibrated on random batches of the timed shape (speed only)."""
  from tokax.reduction import build, calibrate_dtome

  reduction = build(spec)
  if reduction is not None and reduction.needs_calibration:
    image = (model.image_size, model.image_size, 3)
    batches = random_batches((8, *image), jnp.float32, count=2, seed=3)
    reduction = calibrate_dtome(model, params, [b.astype(model.dtype) for b in batches], reduction)
  return reduction


def check_reduction(spec: str) -> None:
  """--reduction takes any tokax.reduction.build spec of a block method (a ViT forward is timed)."""
  from tokax.reduction import build

  try:
    reduction = build(spec)
  except ValueError as e:
    raise ValueError(f"--reduction {spec!r}: {e}") from None
  if reduction is not None and reduction.placement == "post":
    raise ValueError(f"--reduction {spec!r}: a post-encoder reducer leaves the ViT forward unchanged; time it "
                     "with python -m tokax.bench.sweep (post_methods)")


def _tokax_rows(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
  from tokax.models import ViT

  dtype = jnp.dtype(args.dtype)
  shape = (args.batch, args.image_size, args.image_size, 3)
  base = ViT(variant=args.variant, num_classes=args.num_classes, image_size=args.image_size,
             dtype=dtype, attention=None if args.attention == "auto" else args.attention,
             gelu_approximate=args.gelu == "tanh")
  params = jax.jit(base.init)(jax.random.key(0), jnp.zeros((1, *shape[1:]), dtype))
  params = cast_floating(params, dtype)
  for spec in args.reduction:
    model = base.clone(reduction=block_reduction(spec, base, params))
    result = measure(lambda p, x, m=model: m.apply(p, x), params, shape, dtype, warmup=args.warmup, repeats=args.repeats)
    result["gflops_per_image"] = vit_forward_gflops(model, params, shape, dtype)  # the compiled count misses GPU GEMMs
    yield {"impl": f"tokax ({args.attention})", "reduction": spec, **result}


def _timm_rows(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
  import torch

  from tokax.reduction import build

  timm = _import_timm()
  device = "cuda" if torch.cuda.is_available() else "cpu"
  dtype = getattr(torch, args.dtype)
  name = args.timm_model or timm_model_name(args.variant, args.image_size)
  shape = (args.batch, 3, args.image_size, args.image_size)
  tome = None
  if args.tome_official:
    sys.path.insert(0, os.path.abspath(args.tome_official))
    import tome

  def build(r: int | None):
    model = timm.create_model(name, pretrained=False, num_classes=args.num_classes, img_size=args.image_size)
    model = model.to(device=device, dtype=dtype).eval()
    if r is not None:
      tome.patch.timm(model)
      model.r = r
    return model

  # (label, reduction spec, ToMe r or None, torch.compile it): the official ToMe patch runs eager only,
  # as in its own benchmark; its per-call Python schedule makes torch.compile re-trace.
  variants = [("timm", "none", None, args.torch_compile)]
  if tome is not None:
    tome_specs = [spec for spec in args.reduction if type(build(spec)).__name__ == "ToMe"]
    variants += [("timm + official ToMe", spec, build(spec).r, False) for spec in tome_specs]
  for impl, spec, r, compile_it in variants:
    modes = {"eager": build(r)}
    if compile_it:
      modes[f"compile:{args.torch_compile_mode}"] = torch.compile(build(r), mode=args.torch_compile_mode)
    for mode, model in modes.items():
      warmup = args.warmup + (3 if mode != "eager" else 0)  # the first calls compile
      result = measure_torch(model, shape, dtype, warmup=warmup, repeats=args.repeats)
      yield {"impl": f"{impl} ({mode})", "reduction": spec, **result, "gflops_per_image": None}


_TABLE_HEAD = "| implementation | reduction | images/s | median ms | GFLOPs/img |\n|---|---|---|---|---|"


def _markdown_row(row: dict[str, Any]) -> str:
  gflops = "-" if row.get("gflops_per_image") is None else f"{row['gflops_per_image']:.2f}"
  return f"| {row['impl']} | {row['reduction']} | {row['images_per_s']:,.0f} | {row['median_ms']:.2f} | {gflops} |"


def to_markdown(rows: list[dict[str, Any]], header: str = "") -> str:
  """Rows of measure() results (plus impl, reduction) as a markdown table."""
  return "\n".join(([header] if header else []) + [_TABLE_HEAD] + [_markdown_row(row) for row in rows])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", default="B/16")
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
  parser.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"])
  parser.add_argument("--gelu", default="exact", choices=["exact", "tanh"],
                      help="exact: timm's erf GELU; tanh: big_vision's, which XLA fuses into the matmul")
  parser.add_argument("--reduction", action="append",
                      help="a tokax.reduction.build spec of a block method: 'none', 'tome:16', 'tome:16,-1', 'evit:0.7', "
                           "'pitome:0.9', 'mctf:16', 'dtome:8', 'slim:0.5', ...; repeat for several rows (default: none)")
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--timm", action="store_true", help="also time the timm model (eager and torch.compile)")
  parser.add_argument("--timm-model", default=None, help="timm model name (default: from --variant and --image-size)")
  parser.add_argument("--no-torch-compile", dest="torch_compile", action="store_false")
  parser.add_argument("--torch-compile-mode", default="max-autotune-no-cudagraphs")
  parser.add_argument("--tome-official", default=None, metavar="PATH", help="facebookresearch/ToMe checkout (needs --timm)")
  parser.add_argument("--out", default=None, help="JSON file for the rows (the markdown table goes beside it, .md)")
  args = parser.parse_args(argv)
  args.reduction = args.reduction or ["none"]
  for spec in args.reduction:
    check_reduction(spec)
  if args.tome_official and not args.timm:
    parser.error("--tome-official needs --timm")
  return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  """Runs the benchmark; prints each table row as soon as it is measured and rewrites --out after each."""
  args = parse_args(argv)
  device = jax.devices()[0].device_kind
  settings = {"variant": args.variant, "image_size": args.image_size, "batch": args.batch, "dtype": args.dtype,
              "device": device, "jax": jax.__version__}
  header = f"{args.variant} at {args.image_size} px, batch {args.batch}, {args.dtype}, on {device} (jax {jax.__version__})\n"
  print(header + "\n" + _TABLE_HEAD, flush=True)
  sources = [_tokax_rows(args)] + ([_timm_rows(args)] if args.timm else [])
  rows = []
  for row in itertools.chain(*sources):
    rows.append({**settings, **row})
    print(_markdown_row(rows[-1]), flush=True)
    if args.out:
      _write(rows, header, args.out)
  return rows


def _write(rows: list[dict[str, Any]], header: str, path: str) -> None:
  """The rows as JSON at `path` and as a markdown table beside it (.md)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(rows, f, indent=2)
  with open(os.path.splitext(path)[0] + ".md", "w", encoding="utf-8") as f:
    f.write(to_markdown(rows, header) + "\n")


if __name__ == "__main__":
  main()
