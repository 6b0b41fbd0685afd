"""Meshes and parameter sharding rules from config data.

A mesh comes from a mapping of axis names to sizes, `{"data": -1, "model": 1}` (-1: the devices
that are left). Parameters are placed by rules: a list of `(regex, spec)` pairs; the first regex
that `re.search`es a leaf's '/'-joined path (e.g. "params/blocks_0/attn/qkv/kernel") picks its
spec. A spec is a PartitionSpec written as a tuple (one entry per leading dim: None, an axis name
or a tuple of axis names; shorter tuples leave the trailing dims replicated), or the string
"fsdp": shard the largest dim divisible by the data axis over it (replicate if none is).

Rules match the whole train state, so the optimizer's moments ("opt_state/.../mu/params/...")
follow the parameters they belong to. Presets:
  replicated   every leaf on every device (plain data parallelism).
  fsdp         every leaf's largest divisible dim over "data" (ZeRO-3 style); step and rng replicated.
  tensor       Megatron-style over "model": qkv and mlp_fc1 column-parallel (output dim), proj and
               mlp_fc2 row-parallel (input dim); the rest replicated.
  fsdp_tensor  tensor, with the other dim of those kernels and every other leaf over "data".
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Union

import jax
import numpy as np

SpecEntry = Union[None, str, tuple[str, ...]]
Spec = Union[str, tuple[SpecEntry, ...]]
Rule = tuple[str, Spec]

FSDP = "fsdp"
DATA_AXIS = "data"
MODEL_AXIS = "model"

_COLUMN = r"(attn/qkv|mlp_fc1)"
_ROW = r"(attn/proj|mlp_fc2)"

PRESETS: dict[str, tuple[Rule, ...]] = {
    "replicated": ((r".*", ()),),
    "fsdp": ((r"^(step|rng)$", ()), (r".*", FSDP)),
    "tensor": (
        (_COLUMN + r"/kernel$", (None, MODEL_AXIS)),
        (_COLUMN + r"/bias$", (MODEL_AXIS,)),
        (_ROW + r"/kernel$", (MODEL_AXIS, None)),
        (r".*", ()),
    ),
    "fsdp_tensor": (
        (r"^(step|rng)$", ()),
        (_COLUMN + r"/kernel$", (DATA_AXIS, MODEL_AXIS)),
        (_COLUMN + r"/bias$", (MODEL_AXIS,)),
        (_ROW + r"/kernel$", (MODEL_AXIS, DATA_AXIS)),
        (r".*", FSDP),
    ),
}


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Axis sizes of `axes` (name -> size, at most one -1) over `num_devices` devices.

  >>> mesh_shape({"data": -1, "model": 2}, 8)
  (4, 2)
  """
  if not axes:
    raise ValueError("config.mesh: needs at least one axis, e.g. {'data': -1, 'model': 1}")
  sizes = [int(size) for size in axes.values()]
  fill = [i for i, size in enumerate(sizes) if size == -1]
  if len(fill) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1 (the rest of the devices); got {dict(axes)}")
  for name, size in zip(axes, sizes):
    if size != -1 and size < 1:
      raise ValueError(f"config.mesh.{name}: expected a positive size or -1; got {size}")
  known = math.prod(size for size in sizes if size != -1)
  if fill:
    if num_devices % known:
      raise ValueError(f"config.mesh: the fixed axes of {dict(axes)} ({known} devices) do not divide the "
                       f"{num_devices} devices; change their sizes")
    sizes[fill[0]] = num_devices // known
  elif known != num_devices:
    raise ValueError(f"config.mesh: {dict(axes)} covers {known} devices but there are {num_devices}; "
                     f"set one axis to -1 or make the sizes multiply to {num_devices}")
  return tuple(sizes)


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A jax.make_mesh mesh with the axes of `axes` (name -> size, -1 fills) over `devices` (default: all)."""
  axes = dict(axes)
  if DATA_AXIS not in axes:
    raise ValueError(f"config.mesh: needs a {DATA_AXIS!r} axis (the batch is split over it); got {axes}")
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(axes, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(shape)
  return jax.make_mesh(shape, tuple(axes), axis_types=auto, devices=devices)


def resolve_rules(rules: str | Sequence[Rule], extra: Sequence[Rule] = ()) -> tuple[Rule, ...]:
  """`extra` rules followed by a preset's (by name) or an explicit rule list; always ends in a catch-all."""
  if isinstance(rules, str):
    if rules not in PRESETS:
      raise ValueError(f"config.sharding.preset: unknown preset {rules!r}; expected one of {sorted(PRESETS)}")
    rules = PRESETS[rules]
  resolved = []
  for rule in (*extra, *rules):
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"config.sharding.rules: each rule is (regex, spec); got {rule!r}")
    pattern, spec = rule
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"config.sharding.rules: bad regex {pattern!r}: {e}") from e
    if isinstance(spec, str) and spec != FSDP:
      raise ValueError(f"config.sharding.rules: spec {spec!r} of {pattern!r} must be a tuple or {FSDP!r}")
    resolved.append((pattern, spec if isinstance(spec, str) else tuple(spec)))
  return (*resolved, (r".*", ()))


def path_string(path: tuple[Any, ...]) -> str:
  """A key path as the '/'-joined names the rules match: "params/blocks_0/attn/qkv/kernel"."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _axis_size(mesh: jax.sharding.Mesh, entry: SpecEntry) -> int:
  names = (entry,) if isinstance(entry, str) else tuple(entry)
  return math.prod(mesh.shape[name] for name in names)


def _fsdp_spec(shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> jax.P:
  """Shards the largest dim of `shape` that the data axis divides; replicated if none does."""
  size = mesh.shape[DATA_AXIS]
  if size == 1:
    return jax.P()
  divisible = [d for d in np.argsort(shape, kind="stable")[::-1] if shape[d] % size == 0]
  if not divisible:
    return jax.P()
  spec = [None] * len(shape)
  spec[int(divisible[0])] = DATA_AXIS
  return jax.P(*spec)


def leaf_spec(path: str, shape: tuple[int, ...], rules: Sequence[Rule], mesh: jax.sharding.Mesh) -> jax.P:
  """The PartitionSpec the first matching rule gives a leaf of `shape` at `path`; checked against `mesh`."""
  for pattern, spec in rules:
    if re.search(pattern, path):
      break
  if spec == FSDP:
    return _fsdp_spec(shape, mesh)
  if len(spec) > len(shape):
    raise ValueError(f"sharding rule {pattern!r} -> {spec} has {len(spec)} entries but {path} has shape {shape}; "
                     f"write at most {len(shape)} entries or narrow the regex")
  for dim, entry in enumerate(spec):
    if entry is None:
      continue
    names = (entry,) if isinstance(entry, str) else tuple(entry)
    for name in names:
      if name not in mesh.shape:
        raise ValueError(f"sharding rule {pattern!r} -> {spec} names mesh axis {name!r}, which the mesh "
                         f"{dict(mesh.shape)} lacks; add it to config.mesh or fix the rule")
    size = _axis_size(mesh, entry)
    if shape[dim] % size:
      raise ValueError(f"sharding rule {pattern!r} -> {spec}: dim {dim} of {path} (shape {shape}) has size "
                       f"{shape[dim]}, not divisible by mesh axis {entry!r} of size {size}; change the mesh "
                       f"sizes, the model width, or the rule")
  return jax.P(*spec)


def tree_specs(tree: Any, rules: Sequence[Rule], mesh: jax.sharding.Mesh) -> Any:
  """A PartitionSpec for every leaf of `tree` (arrays or ShapeDtypeStructs), by the first matching rule."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: leaf_spec(path_string(path), tuple(np.shape(leaf)), rules, mesh), tree)


def tree_shardings(tree: Any, rules: Sequence[Rule], mesh: jax.sharding.Mesh) -> Any:
  """A NamedSharding over `mesh` for every leaf of `tree`, by the first matching rule."""
  return jax.tree.map(lambda spec: jax.NamedSharding(mesh, spec), tree_specs(tree, rules, mesh),
                      is_leaf=lambda x: isinstance(x, jax.P))


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
  """Batch arrays (B, ...): split over "data", replicated over the other axes."""
  return jax.NamedSharding(mesh, jax.P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> jax.NamedSharding:
  return jax.NamedSharding(mesh, jax.P())


def process_batch_slice(sharding: jax.sharding.Sharding, global_batch: int) -> slice:
  """The rows [start, stop) of a (global_batch, ...) array that this process's devices hold under `sharding`.

  Each process loads only these rows and builds the global array with
  jax.make_array_from_process_local_data. They must be contiguous (true for jax.make_mesh meshes).
  """
  indices = sharding.addressable_devices_indices_map((global_batch,)).values()
  starts = sorted({(index[0].start or 0, global_batch if index[0].stop is None else index[0].stop)
                   for index in indices})
  for (_, stop), (start, _) in zip(starts, starts[1:]):
    if start != stop:
      raise ValueError(f"the batch rows of process {jax.process_index()} are not contiguous ({starts}); "
                       f"order config.mesh so that 'data' is the outer axis")
  return slice(starts[0][0], starts[-1][1])


def global_batch(local: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding, global_size: int) -> dict:
  """{name: (b, ...)} rows of this process -> {name: (global_size, ...)} global jax.Arrays on `sharding`."""
  return {name: jax.make_array_from_process_local_data(sharding, value, (global_size, *value.shape[1:]))
          for name, value in local.items()}
