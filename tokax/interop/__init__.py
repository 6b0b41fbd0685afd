"""Load other libraries' checkpoints into tokax parameters.

  from_timm(timm_model) -> (ViT, params)      a live timm VisionTransformer
  load_checkpoint(path, model) -> params      timm/DeiT .safetensors, .pth/.pt/.bin, or .npz
  load_npz(path, model) -> params             big_vision / AugReg .npz
  check_params(params, model) -> params       validate (and fit) converted params to a ViT
  timm_names.parse_timm_name(name)            ViT fields and preprocessing of a timm name, without timm
  hub.hub_file(repo_id)                       a file from the Hugging Face hub or its offline cache

tokax.create_model(name, pretrained=True) puts these together (tokax.factory).

Importing this package imports neither torch nor timm: torch and safetensors are imported inside
the loaders that read their files, and timm models are read duck-typed.
"""
from tokax.interop.big_vision import load_npz
from tokax.interop.common import check_params
from tokax.interop.timm import convert_state_dict, export_state_dict, from_timm, load_checkpoint

__all__ = ["check_params", "convert_state_dict", "export_state_dict", "from_timm", "load_checkpoint", "load_npz"]
