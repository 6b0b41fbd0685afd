r"""Saves a grid PNG of glyphs examples (tokax.data.glyphs), each captioned with its class, to look at.

  python scripts/glyphs_preview.py --out /tmp/glyphs_preview.png
  python scripts/glyphs_preview.py --split val --image_size 112 --distractors 3 --num 64
"""
import argparse

import numpy as np
from PIL import Image, ImageDraw

from tokax.data import glyphs


def grid(images: np.ndarray, labels: np.ndarray, columns: int) -> Image.Image:
  """(N, S, S, 3) uint8 images -> one PIL image, columns wide, with each class in the corner."""
  n, size = images.shape[:2]
  rows = -(-n // columns)
  gap = 2
  sheet = Image.new("RGB", (columns * (size + gap), rows * (size + gap)), (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  for i, (image, label) in enumerate(zip(images, labels)):
    x, y = (i % columns) * (size + gap), (i // columns) * (size + gap)
    sheet.paste(Image.fromarray(image), (x, y))
    draw.rectangle((x, y, x + 11, y + 13), fill=(0, 0, 0))
    draw.text((x + 2, y + 1), glyphs.CLASSES[label], fill=(255, 255, 0))
  return sheet


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="/tmp/glyphs_preview.png")
  parser.add_argument("--split", default="train", choices=glyphs.SPLITS)
  parser.add_argument("--num", type=int, default=64)
  parser.add_argument("--columns", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--distractors", type=int, default=0)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  images, labels = glyphs.build(args.split, args.num, image_size=args.image_size, seed=args.seed,
                                distractors=args.distractors)
  grid(images, labels, args.columns).save(args.out)
  print(f"wrote {args.out}: {args.num} {args.split} examples at {args.image_size} px; "
        f"skipped fonts: {glyphs.available_fonts().skipped or 'none'}")


if __name__ == "__main__":
  main()
