"""Deterministic random ViT weights for parity goldens, from numpy alone.

Golden files compare tokax against official PyTorch implementations on random (not pretrained)
weights, so neither side needs a download. The weights must not depend on torch's initialisers
(they change between versions), hence numpy: one `np.random.default_rng(seed)`, names visited in
sorted order, exactly one draw per tensor.

Scales keep activations O(1) through a 12-layer pre-norm ViT (attention logits have unit-order
spread: neither uniform nor one-hot attention):

  parameter (timm names, shapes)                      value
  cls_token (1, 1, C), dist_token (1, 1, C),
    pos_embed (1, N, C)                                0.5 * normal
  *.weight with ndim >= 2: linear (out, in),
    conv (out, in, kh, kw)                             normal / sqrt(fan_in), fan_in = prod(shape[1:])
  *.weight with ndim 1 and "norm" in the name:
    LayerNorm scale (C,)                               1 + 0.1 * normal
  *.gamma with "ls1" / "ls2" in the name:
    LayerScale (C,)                                    0.1 + 0.05 * normal
  *.bias (C,) and anything else                        0.1 * normal

All arrays are float32.
"""

from __future__ import annotations

import math

import numpy as np

_TOKEN_PARAMS = ("cls_token", "dist_token", "pos_embed")


def _scale_and_offset(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "gamma" and ("ls1" in name or "ls2" in name):
        return 0.05, 0.1
    if leaf in _TOKEN_PARAMS:
        return 0.5, 0.0
    if leaf == "weight" and len(shape) >= 2:
        return 1.0 / math.sqrt(math.prod(shape[1:])), 0.0
    if leaf == "weight" and len(shape) == 1 and "norm" in name:
        return 0.1, 1.0
    return 0.1, 0.0  # biases and anything else


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Returns {name: float32 array of shapes[name]}, a function of (shapes, seed) only."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(int(d) for d in shapes[name])
        scale, offset = _scale_and_offset(name, shape)
        draw = rng.standard_normal(shape, dtype=np.float64)
        out[name] = (offset + scale * draw).astype(np.float32)
    return out


# T2T-ViT: the same draws, with three changes that keep the official model in its working range.
T2T_KQV_SCALE = 0.2  # Token_performer.kqv: |k|^2 / 2 of order 1, so exp(w.k - |k|^2 / 2) neither vanishes
T2T_FEATURE_SCALE = 10.0  # Token_performer.w: unit-variance rows, like orthogonal_ * sqrt(m)


def t2t_random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """random_state_dict for an official T2T_ViT, without pos_embed (the fixed sinusoid table).

    The performer's kqv weights are scaled by T2T_KQV_SCALE (else its denominator falls below the
    official 1e-8 epsilon) and its random features `w` by T2T_FEATURE_SCALE.
    """
    out = random_state_dict({k: v for k, v in shapes.items() if k != "pos_embed"}, seed)
    for name in out:
        if name.endswith(".kqv.weight"):
            out[name] *= np.float32(T2T_KQV_SCALE)
        elif name.endswith(".w"):
            out[name] *= np.float32(T2T_FEATURE_SCALE)
    return out
