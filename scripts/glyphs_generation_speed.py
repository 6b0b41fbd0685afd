r"""Measures how fast tokax.data.glyphs renders: ms per image on one core, and images/s on several processes.

  python scripts/glyphs_generation_speed.py --sizes 224,112 --processes 16 --pool_images 100000 --pipeline_workers 14

One core: CPU time (process_time) of build() over `--images` images after a warm-up that fills the caches
(background pyramid, glyph masks), best of 3. Several: `--processes` spawned processes each render their
share of `--pool_images` 224 px images (GlyphSource indices, as the pipeline's workers do), wall time
including each worker's cache warm-up. `--pipeline_workers`: batches/s of the input pipeline (tokax.data.pipeline)
over GlyphSource with that many worker processes, as configs/glyphs_vit.py trains.
"""
import argparse
import multiprocessing
import os
import time

import numpy as np


def _one_core(size: int, images: int, distractors: int) -> float:
  from tokax.data import glyphs

  glyphs.build("train", 2000, image_size=size, distractors=distractors)  # fill the caches
  best = float("inf")
  for rep in range(3):
    start = time.process_time()
    glyphs.build("train", images, image_size=size, start=100_000 + rep * images, distractors=distractors)
    best = min(best, time.process_time() - start)
  return 1e3 * best / images


def _render_share(args: tuple[int, int, int]) -> int:
  from tokax.data import glyphs

  size, lo, hi = args
  source = glyphs.GlyphSource("train", num_examples=hi, image_size=size)
  checksum = 0
  for i in range(lo, hi):
    checksum += int(source[i]["image"][0, 0, 0])
  return checksum


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", default="224,112")
  parser.add_argument("--images", type=int, default=1000)
  parser.add_argument("--processes", type=int, default=0)
  parser.add_argument("--pool_images", type=int, default=100_000)
  parser.add_argument("--pipeline_workers", type=int, default=0,
                      help="also time pipeline.make_iterator('glyphs', batch 256) at each size with this many processes")
  parser.add_argument("--pipeline_batches", type=int, default=200)
  args = parser.parse_args()
  print(f"cpu_count={os.cpu_count()}", flush=True)
  for size in [int(s) for s in args.sizes.split(",")]:
    for distractors in (0, 3):
      ms = _one_core(size, args.images, distractors)
      print(f"one core: {size} px, distractors={distractors}: {ms:.3f} ms/image", flush=True)
  if args.processes:
    n, p = args.pool_images, args.processes
    bounds = np.linspace(0, n, 4 * p + 1).astype(int)
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(p) as pool:
      pool.map(_render_share, [(224, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])])
    wall = time.perf_counter() - start
    print(f"{p} processes: {n} images at 224 px in {wall:.1f} s ({n / wall:.0f} images/s, "
          f"including each worker's warm-up)", flush=True)

  if args.pipeline_workers:
    from tokax.data import pipeline

    for size in [int(s) for s in args.sizes.split(",")]:
      it = pipeline.make_iterator("glyphs", batch_size=256, preprocess=f"resize({size})",
                                  num_workers=args.pipeline_workers,
                                  source_kwargs=dict(image_size=size, num_examples=2_560_000))
      next(it)  # workers started and warm
      start = time.perf_counter()
      for _ in range(args.pipeline_batches):
        next(it)
      wall = time.perf_counter() - start
      it.close()
      print(f"pipeline, {args.pipeline_workers} worker processes: {256 * args.pipeline_batches / wall:.0f} images/s "
            f"at {size} px (uint8, batch 256, after the first batch)", flush=True)

if __name__ == "__main__":
  main()
