"""Random model variables made in numpy: no init program compiled.

On the CPU, compiling a flax model.init (one random-number program per parameter) costs tens of
seconds even for a 2-block ViT, and running it eagerly costs more; tests whose numbers do not depend
on the initialiser take the shapes from jax.eval_shape (a trace, nothing compiled) and fill them here.
"""
import jax
import jax.numpy as jnp
import numpy as np


def random_like(shapes, seed=0, scale=0.2):
  """float32 numpy arrays of the shapes in `shapes` (a tree of ShapeDtypeStructs).

  Normal(0, scale) everywhere, plus 1 on the LayerNorm scales (leaves named "scale").
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    base = 1.0 if getattr(path[-1], "key", None) == "scale" else 0.0
    return (base + scale * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def random_variables(model, image_shape, seed=0, scale=0.2):
  """random_like the variables model.init would give for images of shape (H, W, 3)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
  return random_like(shapes, seed, scale)


def write_pretrained(directory, name, fields, data, seed=3):
  """A random ViT(**fields) saved in tokax.pretrained's layout (NAME.safetensors, bf16-rounded values stored as
  float16, and NAME.json); returns the bf16-rounded parameters ({"params": ...}, numpy float32).

  safetensors.numpy has no bfloat16: float16 bytes of the bf16-rounded values are exact (they fit float16's
  range and bf16's 8-bit mantissa fits float16's 11 bits). C order: save_file writes an array's buffer as
  it lies (the exported kernels are transposed views).
  """
  import hashlib
  import json
  import pathlib

  import ml_dtypes
  from safetensors.numpy import save_file

  from tokax.interop import export_state_dict
  from tokax.models import ViT

  directory = pathlib.Path(directory)
  size = fields["image_size"]
  params = random_variables(ViT(**fields), (size, size, 3), seed=seed)
  rounded = jax.tree.map(lambda p: p.astype(ml_dtypes.bfloat16).astype(np.float32), params)
  state = {k: np.ascontiguousarray(v, np.float16) for k, v in export_state_dict(rounded).items()}
  path = directory / f"{name}.safetensors"
  save_file(state, str(path))
  record = dict(model=fields, data=data, metrics={}, command="test", commit="test", card="cpu",
                sha256=hashlib.sha256(path.read_bytes()).hexdigest())
  (directory / f"{name}.json").write_text(json.dumps(record))
  return rounded
