"""The timm ViT / DeiT names tokax builds without timm: architecture from the name, weights' tags from a table.

A timm name is `<arch>[.<tag>]`: the architecture (vit_base_patch16_224, deit_small_distilled_patch16_224,
deit3_large_patch16_384, ...) fixes the ViT fields; the tag (augreg2_in21k_ft_in1k, fb_in1k, dino, ...)
names one set of weights on the Hugging Face hub (`timm/<arch>.<tag>`) with its classes and its
preprocessing. No tag means timm's default one (the first in PRETRAINED).

  parse_timm_name("vit_base_patch16_224.augreg2_in21k_ft_in1k") -> (ViT kwargs, {mean, std, crop_pct})
  hub_repo("vit_base_patch16_224") -> "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
  timm_names("deit*", pretrained=True) -> ["deit3_base_patch16_224.fb_in1k", ...]

PRETRAINED is timm 1.0.31's registry for the architectures whose weights tokax's ViT computes exactly
(tests/interop/test_timm_names.py compares it with the installed timm). Other timm ViTs that tokax's ViT
computes (a gap-pooled or resized one, say) go through a live timm model: tokax.interop.from_timm.
"""
from __future__ import annotations

import fnmatch
import math
import re
from typing import Any, Mapping

import numpy as np

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_NORMS = {"inception": (INCEPTION_MEAN, INCEPTION_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
          "clip": (CLIP_MEAN, CLIP_STD)}

_I, _IN, _C = "inception", "imagenet", "clip"
# arch -> ((tag, num_classes, normalisation, crop_pct), ...), timm's default tag first; only tags with hub weights.
PRETRAINED: dict[str, tuple[tuple[str, int, str, float], ...]] = {
    "deit3_base_patch16_224": (("fb_in1k", 1000, _IN, 0.9), ("fb_in22k_ft_in1k", 1000, _IN, 1.0)),
    "deit3_base_patch16_384": (("fb_in1k", 1000, _IN, 1.0), ("fb_in22k_ft_in1k", 1000, _IN, 1.0)),
    "deit3_huge_patch14_224": (("fb_in1k", 1000, _IN, 0.9), ("fb_in22k_ft_in1k", 1000, _IN, 1.0)),
    "deit3_large_patch16_224": (("fb_in1k", 1000, _IN, 0.9), ("fb_in22k_ft_in1k", 1000, _IN, 1.0)),
    "deit3_large_patch16_384": (("fb_in1k", 1000, _IN, 1.0), ("fb_in22k_ft_in1k", 1000, _IN, 1.0)),
    "deit3_medium_patch16_224": (("fb_in1k", 1000, _IN, 0.9), ("fb_in22k_ft_in1k", 1000, _IN, 1.0)),
    "deit3_small_patch16_224": (("fb_in1k", 1000, _IN, 0.9), ("fb_in22k_ft_in1k", 1000, _IN, 1.0)),
    "deit3_small_patch16_384": (("fb_in1k", 1000, _IN, 1.0), ("fb_in22k_ft_in1k", 1000, _IN, 1.0)),
    "deit_base_distilled_patch16_224": (("fb_in1k", 1000, _IN, 0.9),),
    "deit_base_distilled_patch16_384": (("fb_in1k", 1000, _IN, 1.0),),
    "deit_base_patch16_224": (("fb_in1k", 1000, _IN, 0.9),),
    "deit_base_patch16_384": (("fb_in1k", 1000, _IN, 1.0),),
    "deit_small_distilled_patch16_224": (("fb_in1k", 1000, _IN, 0.9),),
    "deit_small_patch16_224": (("fb_in1k", 1000, _IN, 0.9),),
    "deit_tiny_distilled_patch16_224": (("fb_in1k", 1000, _IN, 0.9),),
    "deit_tiny_patch16_224": (("fb_in1k", 1000, _IN, 0.9),),
    "vit_base_patch8_224": (("augreg2_in21k_ft_in1k", 1000, _I, 0.9), ("augreg_in21k_ft_in1k", 1000, _I, 0.9),
                            ("augreg_in21k", 21843, _I, 0.9), ("dino", 0, _IN, 0.9)),
    "vit_base_patch16_224": (("augreg2_in21k_ft_in1k", 1000, _I, 0.9), ("augreg_in21k_ft_in1k", 1000, _I, 0.9),
                             ("orig_in21k_ft_in1k", 1000, _I, 0.9), ("augreg_in1k", 1000, _I, 0.9),
                             ("orig_in21k", 0, _I, 0.9), ("augreg_in21k", 21843, _I, 0.9), ("sam_in1k", 1000, _I, 0.9),
                             ("bamboo", 115217, _C, 1.0), ("dino", 0, _IN, 0.9), ("mae", 0, _IN, 0.9)),
    "vit_base_patch16_384": (("augreg_in21k_ft_in1k", 1000, _I, 1.0), ("orig_in21k_ft_in1k", 1000, _I, 1.0),
                             ("augreg_in1k", 1000, _I, 1.0)),
    "vit_base_patch32_224": (("augreg_in21k_ft_in1k", 1000, _I, 0.9), ("augreg_in1k", 1000, _I, 0.9),
                             ("orig_in21k", 0, _I, 0.9), ("augreg_in21k", 21843, _I, 0.9), ("sam_in1k", 1000, _I, 0.9)),
    "vit_base_patch32_384": (("augreg_in21k_ft_in1k", 1000, _I, 1.0), ("augreg_in1k", 1000, _I, 1.0)),
    "vit_huge_patch14_224": (("orig_in21k", 0, _I, 0.9), ("mae", 0, _IN, 0.9)),
    "vit_large_patch14_224": (),
    "vit_large_patch16_224": (("augreg_in21k_ft_in1k", 1000, _I, 0.9), ("orig_in21k", 0, _I, 0.9),
                              ("augreg_in21k", 21843, _I, 0.9), ("mae", 0, _IN, 0.9)),
    "vit_large_patch16_384": (("augreg_in21k_ft_in1k", 1000, _I, 1.0),),
    "vit_large_patch32_224": (("orig_in21k", 0, _I, 0.9),),
    "vit_large_patch32_384": (("orig_in21k_ft_in1k", 1000, _I, 1.0),),
    "vit_small_patch8_224": (("dino", 0, _IN, 0.9),),
    "vit_small_patch16_224": (("augreg_in21k_ft_in1k", 1000, _I, 0.9), ("augreg_in1k", 1000, _I, 0.9),
                              ("augreg_in21k", 21843, _I, 0.9), ("dino", 0, _IN, 0.9)),
    "vit_small_patch16_384": (("augreg_in21k_ft_in1k", 1000, _I, 1.0), ("augreg_in1k", 1000, _I, 1.0)),
    "vit_small_patch32_224": (("augreg_in21k_ft_in1k", 1000, _I, 0.9), ("augreg_in21k", 21843, _I, 0.9)),
    "vit_small_patch32_384": (("augreg_in21k_ft_in1k", 1000, _I, 1.0),),
    "vit_tiny_patch16_224": (("augreg_in21k_ft_in1k", 1000, _I, 0.9), ("augreg_in21k", 21843, _I, 0.9)),
    "vit_tiny_patch16_384": (("augreg_in21k_ft_in1k", 1000, _I, 1.0),),
}

_ARCH = re.compile(r"^(?P<family>vit|deit|deit3)_(?P<size>tiny|small|medium|base|large|huge)_(?P<dist>distilled_)?"
                   r"patch(?P<patch>\d+)_(?P<image>\d+)$")
_SIZES = {"tiny": "Ti", "small": "S", "medium": "M", "base": "B", "large": "L", "huge": "H"}


def split_tag(name: str) -> tuple[str, str | None]:
  """"vit_base_patch16_224.augreg_in1k" -> ("vit_base_patch16_224", "augreg_in1k"); no tag -> (name, None)."""
  arch, dot, tag = name.partition(".")
  return arch, (tag if dot else None)


def is_timm_name(name: str) -> bool:
  """Whether `name` is an architecture of PRETRAINED, with or without a tag (the tag is not checked)."""
  return split_tag(name)[0] in PRETRAINED


def _tag_row(name: str) -> tuple[str, int, str, float] | None:
  """(tag, num_classes, normalisation, crop_pct) of `name`'s tag (timm's default without one); None: no weights.

  Raises:
    ValueError: `name` is no architecture of PRETRAINED, or its tag is not one of the architecture's.
  """
  arch, tag = split_tag(name)
  if arch not in PRETRAINED:
    raise ValueError(f"{name!r} is not a timm ViT / DeiT name tokax knows; tokax.interop.timm_names.timm_names() "
                     "lists them")
  rows = PRETRAINED[arch]
  if tag is None:
    return rows[0] if rows else None
  for row in rows:
    if row[0] == tag:
      return row
  known = ", ".join(f"{arch}.{r[0]}" for r in rows) or f"none: {arch} has no weights on the hub"
  raise ValueError(f"timm name {name!r}: {arch} has no tag {tag!r}; its tags are {known}")


def parse_timm_name(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(ViT kwargs, {mean, std, crop_pct}) of a timm name: the architecture from the name, classes and
  preprocessing from its tag (timm's default tag without one).

  "deit_small_distilled_patch16_224" -> (dict(variant="S/16", image_size=224, num_classes=1000, pool="cls",
  class_token=True, distilled=True, qkv_bias=True, layer_scale=None), dict(mean=IMAGENET_MEAN, ...)).

  Raises:
    ValueError: an architecture or a tag tokax does not know (the message says what it knows).
  """
  row = _tag_row(name)
  m = _ARCH.match(split_tag(name)[0])
  kwargs = dict(variant=f"{_SIZES[m['size']]}/{m['patch']}", image_size=int(m["image"]),
                num_classes=row[1] if row else 1000, pool="cls", class_token=True, distilled=bool(m["dist"]),
                qkv_bias=True, layer_scale=1e-6 if m["family"] == "deit3" else None)
  norm = row[2] if row else ("inception" if m["family"] == "vit" else "imagenet")
  mean, std = _NORMS[norm]
  return kwargs, dict(mean=mean, std=std, crop_pct=row[3] if row else 0.9)


def hub_repo(name: str) -> str:
  """The Hugging Face hub repository of a timm name's weights: "timm/<arch>.<tag>" (timm's default tag without one).

  Raises:
    ValueError: an unknown name or tag, or an architecture without weights on the hub.
  """
  row = _tag_row(name)
  arch = split_tag(name)[0]
  if row is None:
    raise ValueError(f"timm name {name!r}: timm has no pretrained weights for {arch} (pretrained=False builds it)")
  return f"timm/{arch}.{row[0]}"


def timm_names(pattern: str = "*", pretrained: bool = False) -> list[str]:
  """The timm names in PRETRAINED matching the fnmatch `pattern`: architectures, or with pretrained=True
  every "<arch>.<tag>" with weights on the hub (as timm.list_models)."""
  names = ([f"{arch}.{row[0]}" for arch, rows in PRETRAINED.items() for row in rows] if pretrained
           else list(PRETRAINED))
  return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def shapes_from_state_dict(state_dict: Mapping[str, Any], patch: int, prefix: int, image_size: int | None = None,
                           num_classes: int | None = None) -> dict[str, int]:
  """What a timm state dict says and the caller did not: image_size from pos_embed (1, prefix + (S / patch)^2, D),
  num_classes from head.weight (K, D) (0: no head). prefix: the position rows of the class / distillation tokens."""
  out = {}
  if image_size is None and "pos_embed" in state_dict:
    grid = math.isqrt(int(np.shape(state_dict["pos_embed"])[1]) - prefix)
    out["image_size"] = grid * patch
  if num_classes is None:
    out["num_classes"] = int(np.shape(state_dict["head.weight"])[0]) if "head.weight" in state_dict else 0
  return out
