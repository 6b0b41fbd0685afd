"""Per-layer reduction amounts, resolved statically so jit compiles once per schedule."""
from __future__ import annotations

from typing import Sequence


def parse_r(num_layers: int, r: int, inflection: float = 0.0, per_layer: Sequence[int] | None = None) -> tuple[int, ...]:
  """ToMe's r schedule (tome/utils.py parse_r), as a tuple of per-layer merge counts.

  Args:
    num_layers: model depth L.
    r: constant tokens merged per layer (used when per_layer is None).
    inflection: in [-1, 1]; -1 is the paper's decreasing schedule, 0 constant, +1 increasing.
    per_layer: explicit counts; shorter lists are padded with zeros, as ToMe does.

  Returns:
    (L,) merge counts before the per-layer clip to (N - protected) // 2.
  """
  if per_layer is not None:
    counts = list(per_layer) + [0] * max(0, num_layers - len(per_layer))
    return tuple(int(c) for c in counts)
  if not -1.0 <= inflection <= 1.0:
    raise ValueError(f"inflection must be in [-1, 1]; got {inflection}")
  if num_layers == 1:
    return (int(r),)
  min_val = int(r * (1.0 - inflection))
  max_val = 2 * r - min_val
  step = (max_val - min_val) / (num_layers - 1)
  return tuple(int(min_val + step * i) for i in range(num_layers))


def clip_r(r: int, num_tokens: int, num_protected: int) -> int:
  """At most half the unprotected tokens merge in one layer (tome/merge.py)."""
  return max(0, min(r, (num_tokens - num_protected) // 2))


def token_counts(num_tokens: int, num_protected: int, rs: Sequence[int]) -> tuple[int, ...]:
  """Token count after each layer for a ToMe-style schedule (static, no tracing)."""
  counts = []
  for r in rs:
    num_tokens -= clip_r(r, num_tokens, num_protected)
    counts.append(num_tokens)
  return tuple(counts)
