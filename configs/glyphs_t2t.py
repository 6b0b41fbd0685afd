r"""T2T-ViT-7 trained from scratch on glyphs with configs/glyphs_vit.py's recipe: the T2T side of "T2T-ViT-7 vs
ViT-Ti/16 at equal training budget" (same data, steps, batch, optimizer, schedule, augmentation and dtype;
only the model differs).

  python -m tokax.train --config configs/glyphs_t2t.py --workdir /tmp/glyphs_t2t7                    # 224 px, GPU
  python -m tokax.train --config configs/glyphs_t2t.py:image_size=112 --workdir /tmp/glyphs_t2t7_112
  python -m tokax.train --config configs/glyphs_vit.py:image_size=112 --workdir /tmp/glyphs_ti16_112  # the ViT side
  python -m tokax.train --config configs/glyphs_t2t.py:runlocal --workdir /tmp/glyphs_t2t_local       # CPU, seconds

T2T-ViT-7 (yitu-opensource/T2T-ViT: performer T2T stem of width 64, then 7 blocks of width 256, 4 heads, MLP
ratio 2) reads the image through three soft splits (7x7 stride 4, 3x3 stride 2, 3x3 stride 2): 1/16 of the
side, the token grid of a /16 ViT (196 + cls at 224 px, 49 + cls at 112 px). About 1.1 GFLOPs per image at
224 px against ViT-Ti/16's 1.3. scripts/device/glyphs_t2t.sh trains both at 112 px with three seeds each.

Arguments (`:key=value,flag`): variant (a T2T-ViT preset: 7, 10, 12, 14, ...), image_size (0: 224), seed,
runlocal (a few steps of a one-block model at 32 px, for tests). Everything else is glyphs_vit.py's.
"""
import os

import ml_collections

from tokax.train.config_utils import load_config_file, parse_arg

BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "glyphs_vit.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = parse_arg(arg, variant="7", image_size=0, seed=0, runlocal=False)
  config = load_config_file(BASE + (":runlocal" if arg.runlocal else f":image_size={arg.image_size}"))
  config.seed = arg.seed
  image_size = config.model.image_size
  # T2TViT(**fields) (tokax.train.model.MODELS["t2t_vit"]); num_classes: the data's (32). Dropouts off, as the
  # ViT side: the stem's performer dropout is the official 0.1 only where a recipe asks for it.
  config.model = dict(name="t2t_vit", variant=arg.variant, image_size=image_size, drop_path=0.0, stem_dropout=0.0,
                      dtype=config.model.dtype, attention="auto", interpret=False)
  if arg.runlocal:
    config.model.update(width=32, depth=1, num_heads=2, mlp_ratio=2.0)
  return config
