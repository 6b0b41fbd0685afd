"""FasterVLM as a post-encoder reducer: keep the patch tokens the [CLS] token attends to most.

The selection itself (cls_select_plan, cls_select) lives beside EViT's in evit.py, which documents
its parity with Theia-4869/FasterVLM. This file is the
registry's "fastervlm" entry: `build("fastervlm:0.25")`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import ClassVar

import jax

from tokax.reduction.evit import cls_select
from tokax.reduction.tokens import Tokens

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class FasterVLM:
  """FasterVLM's selection: the top `ratio` of the patch tokens by [CLS] attention, in original order.

  `FasterVLM(ratio=0.25)(tokens, {"cls": cls_attn}) -> Tokens`, with cls_attn (B, N) the head-averaged
  [CLS] attention row of the layer the tokens come from. The prefix tokens ([CLS], distillation)
  are dropped, as FasterVLM drops [CLS].

  Attributes:
    ratio: fraction of the patch tokens kept, in (0, 1]: max(1, int((N - P) * ratio)) tokens.
  """
  placement: ClassVar[str] = "post"
  scores: ClassVar[tuple[str, ...]] = ("cls",)
  strength_field: ClassVar[str] = "ratio"
  needs_calibration: ClassVar[bool] = False
  variable_tokens: ClassVar[bool] = False

  ratio: float = 0.25

  def __post_init__(self):
    ratio = self.ratio
    if (isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or math.isnan(float(ratio))
        or not 0.0 < float(ratio) <= 1.0):
      raise ValueError(f"FasterVLM.ratio: the fraction of patch tokens kept must be in (0, 1]; got {ratio!r}")
    object.__setattr__(self, "ratio", float(ratio))

  def output_tokens(self, num_tokens: int, num_prefix: int = 1) -> int:
    """Tokens out for num_tokens in (the prefix is dropped)."""
    return max(1, int((num_tokens - num_prefix) * self.ratio))

  def __call__(self, tokens: Tokens, metrics: dict[str, Array] | None = None) -> Tokens:
    if metrics is None or "cls" not in metrics:
      raise ValueError('FasterVLM: metrics["cls"] (B, N) is required: the [CLS] attention row that ranks the tokens')
    return cls_select(tokens, metrics["cls"], self.output_tokens(tokens.num_tokens, tokens.num_prefix))
