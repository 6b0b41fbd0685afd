"""Official OliverRensu/xAR state dicts -> tokax.models.xar.XAR variables.

Linear weights are transposed to Dense kernels; RMSNorm weights become `scale`; the learned
position embeddings drop their `_learned` suffix; buffers (the block-causal mask, RoPE tables)
are not parameters in tokax and are skipped.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

_SKIP = re.compile(r"(^mask$|\.rope\.)")
_RENAMES = (
    (r"^class_emb\.weight$", "class_emb/embedding"),
    (r"^time_embed\.mlp\.(\d)\.(weight|bias)$", r"time_embed/mlp_\1/\2"),
    (r"^(z_proj_ln|encoder_norm|decoder_norm)\.weight$", r"\1/scale"),
    (r"^(encoder|decoder)_pos_embed_learned$", r"\1_pos_embed"),
    (r"^(encoder|decoder)_blocks\.(\d+)\.ada_lin\.1\.(weight|bias)$", r"\1_blocks_\2/ada_lin/\3"),
    (r"^(encoder|decoder)_blocks\.(\d+)\.(attn|mlp)\.(\w+)\.(weight|bias)$", r"\1_blocks_\2/\3/\4/\5"),
    (r"^(z_proj|decoder_embed|pred)\.(weight|bias)$", r"\1/\2"),
)


def _tokax_name(name: str) -> str | None:
  if _SKIP.search(name):
    return None
  for pattern, repl in _RENAMES:
    if re.match(pattern, name):
      return re.sub(pattern, repl, name)
  raise ValueError(f"xar interop: unexpected official parameter {name!r}")


def params_from_official(state_dict: Mapping[str, Any]) -> dict:
  """{"params": ...} for XAR from an official xAR state dict (torch tensors or numpy arrays).

  The XAR must be built with the same width, depths, heads, token_dim=16, grid_size=16 and
  num_classes=1000 (the official code fixes 1000 classes and 16-channel tokens).
  """
  params: dict = {}
  for name, value in state_dict.items():
    path = _tokax_name(name)
    if path is None:
      continue
    array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, np.float32)
    *parents, leaf = path.split("/")
    if leaf == "weight":
      leaf, array = "kernel", array.T
    node = params
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = array
  return {"params": params}
