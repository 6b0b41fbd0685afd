r"""Host input throughput: images/s of the decode|resize|crop|flip pipeline, per worker-thread count.

  python -m tokax.bench.input_pipeline                       # synthetic ImageNet-like JPEGs, 1 and 2 threads
  python -m tokax.bench.input_pipeline --threads 1 2 4 8 16 --batch 256 --batches 40 --out /tmp/input.json
  python -m tokax.bench.input_pipeline --stored decoded --preprocess "random_crop(224)|flip_lr" \
      --threads 1 8 --workers 4 8 14     # uint8 batches from worker processes
  python -m tokax.bench.input_pipeline --data folder:/data/imagenet --split train --threads 16
  python -m tokax.bench.input_pipeline --data tfds:imagenet2012:train --threads 16 \
      --preprocess "decode|inception_crop(224)|flip_lr|value_range(-1, 1)"

The default data are --num-images JPEGs (quality 90, 500x375 like a typical ImageNet photo) encoded
in memory from random crops of scikit-image's bundled photos, so the numbers measure decoding and
resizing, not the disk. --stored decoded keeps them decoded and resized to short side 256 as uint8
(decoded once up front, as a pre-resized dataset would be), leaving crop, flip and normalise. The default pipeline is the ViT-S/16 at 224 train pipeline
"decode|resize_small(256)|random_crop(224)|flip_lr|value_range(-1, 1)" through
tokax.data.pipeline.DataIterator (grain threads, in order, prefetching). Compare the images/s with
the accelerator's train-step images/s for the same model (python -m tokax.bench.throughput, or the
trainer's train/images_per_s): the host keeps the device busy when its rate is higher.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import time
from typing import Any

import numpy as np

from tokax.data import pipeline

DEFAULT_PREPROCESS = "decode|resize_small(256)|random_crop(224)|flip_lr|value_range(-1, 1)"
DECODED_PREPROCESS = "random_crop(224)|flip_lr|value_range(-1, 1)"


def synthetic_jpegs(num_images: int, *, height: int = 375, width: int = 500, quality: int = 90,
                    seed: int = 0) -> list[dict[str, Any]]:
  """num_images {"image": JPEG bytes (height x width), "label": int} from crops of scikit-image's photos."""
  import skimage.data as skd  # noqa: PLC0415
  from PIL import Image  # noqa: PLC0415

  photos = [np.asarray(getattr(skd, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left")
            if hasattr(skd, name)] or [np.asarray(skd.astronaut())]
  photos = [Image.fromarray(p if p.ndim == 3 else np.repeat(p[..., None], 3, -1)).convert("RGB") for p in photos]
  rng = np.random.default_rng(seed)
  out = []
  for i in range(num_images):
    photo = photos[i % len(photos)]
    w, h = photo.size
    scale = rng.uniform(1.0, 1.6) * max(width / w, height / h)
    resized = photo.resize((max(width, round(w * scale)), max(height, round(h * scale))), Image.BILINEAR)
    left = int(rng.integers(resized.size[0] - width + 1))
    top = int(rng.integers(resized.size[1] - height + 1))
    buffer = io.BytesIO()
    resized.crop((left, top, left + width, top + height)).save(buffer, format="JPEG", quality=quality)
    out.append({"image": buffer.getvalue(), "label": i % 1000})
  return out


def decoded_source(source: list[dict[str, Any]], size: int = 256) -> list[dict[str, Any]]:
  """The JPEG source decoded once and resized to short side `size`, stored as uint8 arrays."""
  prepare = pipeline.DataIterator(source, batch_size=1, preprocess=f"decode|resize_small({size})", seed=0,
                                  num_threads=1).preprocess
  rng = np.random.default_rng(0)
  return [{"image": np.asarray(prepare(dict(ex), rng)["image"]).astype(np.uint8), "label": ex["label"]}
          for ex in source]


def measure(source: Any, *, threads: int, batch: int, batches: int, preprocess: str, seed: int = 0,
            workers: int = 0) -> dict[str, Any]:
  """images/s over at least 3 rounds of the workers' batches after one warm-up batch (which starts them).

  Each worker (thread, or process when workers > 0) builds whole batches, so the first round of
  batches comes out together: timing fewer batches than a few rounds measures the prefetch.
  """
  parallel = workers or threads
  batches = max(batches, 3 * parallel)
  it = pipeline.DataIterator(source, batch_size=batch, preprocess=preprocess, seed=seed, num_threads=threads,
                             num_workers=workers, prefetch=2 * parallel)
  first = next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - start
  it.close()
  return {"threads": threads, "workers": workers, "batch": batch, "batches": batches, "images_per_s": batches * batch / seconds,
          "seconds": seconds, "image_shape": list(first["image"].shape[1:]), "dtype": str(first["image"].dtype)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default="synthetic", help="'synthetic', 'tfds:<name>[:split]' or 'folder:<root>'")
  parser.add_argument("--split", default="train")
  parser.add_argument("--num-images", type=int, default=512, help="synthetic JPEGs to encode")
  parser.add_argument("--preprocess", default=None, help=f"default: {DEFAULT_PREPROCESS!r}; with --stored "
                      f"decoded: {DECODED_PREPROCESS!r}")
  parser.add_argument("--stored", choices=("jpeg", "decoded"), default="jpeg",
                      help="synthetic data as JPEG bytes, or decoded once to uint8 at short side 256")
  parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--workers", type=int, nargs="*", default=[],
                      help="also time these numbers of worker processes (DataIterator num_workers)")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--batches", type=int, default=4, help="timed batches per thread count")
  parser.add_argument("--out", default=None, help="write the rows as JSON here")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  args = parse_args(argv)
  if args.preprocess is None:
    args.preprocess = DECODED_PREPROCESS if args.stored == "decoded" else DEFAULT_PREPROCESS
  if args.data == "synthetic":
    source = synthetic_jpegs(args.num_images)
    if args.stored == "decoded":
      source = decoded_source(source)
  else:
    source = pipeline.get_source(args.data, args.split)
  rows = []
  print(f"| workers | images/s | batch | ({args.data}, {args.stored}, {len(source)} images, cpus={os.cpu_count()}: "
        f"{args.preprocess})")
  print("|---|---|---|")
  runs = [(threads, 0) for threads in args.threads] + [(1, workers) for workers in args.workers]
  for threads, workers in runs:
    row = measure(source, threads=threads, batch=args.batch, batches=args.batches, preprocess=args.preprocess,
                  workers=workers)
    row.update(data=args.data, stored=args.stored, preprocess=args.preprocess, cpu_count=os.cpu_count())
    rows.append(row)
    label = f"{workers} processes" if workers else f"{threads} threads"
    print(f"| {label} | {row['images_per_s']:.0f} | {args.batch} |", flush=True)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=2)
  return rows


if __name__ == "__main__":
  main()
