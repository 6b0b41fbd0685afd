"""Helpers for config files: the typed `arg` parser of get_config(arg), step durations, the check of sizes and
periods at start, loading a config file, and the configs that ship inside the package ("tokax:<name>.py[:arg]")."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a config argument "key=value,flag" into a ConfigDict typed by `defaults`.

  `--config file.py:variant=Ti/8,runlocal` calls get_config("variant=Ti/8,runlocal"). A bare key
  sets a bool default to True; values are converted to the type of their default; an unknown key
  is an error.

  Args:
    arg: the text after the colon, or None / "" for all defaults.
    **defaults: every accepted key with its default value (bool, int, float or str).

  Returns:
    a locked ConfigDict with one field per default.
  """
  values = dict(defaults)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, has_value, text = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"config argument: unknown key {key!r} in {arg!r}; expected some of {sorted(defaults)}")
    kind = type(defaults[key])
    if not has_value:
      if kind is not bool:
        raise ValueError(f"config argument: {key!r} needs a value ({key}=...) in {arg!r}")
      values[key] = True
    else:
      values[key] = _convert(key, text.strip(), kind)
  result = ml_collections.ConfigDict(values)
  result.lock()
  return result


def _convert(key: str, text: str, kind: type) -> Any:
  if kind is bool:
    if text.lower() in ("1", "true", "yes"):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"config argument: {key!r} expects a bool; got {text!r}")
  try:
    return kind(text)
  except ValueError as e:
    raise ValueError(f"config argument: {key!r} expects {kind.__name__}; got {text!r}") from e


def steps(name: str, config: ml_collections.ConfigDict, num_examples: int, batch_size: int,
          *, default: int | None = None) -> int:
  """A duration read from `{name}_steps` or `{name}_epochs` of `config`, in steps.

  Exactly one of the two may be set (not None); with neither set, `default` is returned (an
  error when default is None). Epochs become ceil(epochs * num_examples / batch_size) steps.
  """
  step_count = config.get(f"{name}_steps")
  epochs = config.get(f"{name}_epochs")
  if step_count is not None and epochs is not None:
    raise ValueError(f"config: set only one of {name}_steps={step_count} and {name}_epochs={epochs}")
  if step_count is not None:
    if step_count < 0:
      raise ValueError(f"config: {name}_steps must be >= 0; got {step_count}")
    return int(step_count)
  if epochs is not None:
    if epochs < 0:
      raise ValueError(f"config: {name}_epochs must be >= 0; got {epochs}")
    return int(math.ceil(epochs * num_examples / batch_size))
  if default is None:
    raise ValueError(f"config: set {name}_steps or {name}_epochs")
  return default


@dataclasses.dataclass(frozen=True)
class Durations:
  """Loop lengths in steps: total, and the periods of logging, evaluation and checkpoints (0: never)."""
  total: int
  log_every: int
  eval_every: int
  checkpoint_every: int


def durations_from_config(config: ml_collections.ConfigDict, num_train: int, batch_size: int,
                          total: int | None = None) -> Durations:
  """config.{total,log_every,eval_every,checkpoint_every}_{steps,epochs} in steps; `total` overrides the first."""
  duration = lambda name, default=None: steps(name, config, num_train, batch_size, default=default)
  return Durations(total=duration("total") if total is None else total, log_every=max(1, duration("log_every", 50)),
                   eval_every=duration("eval_every", 0), checkpoint_every=duration("checkpoint_every", 0))


# (field, least value, what it is): the size and period fields a run reads, checked by check_sizes.
_STEP_FIELDS = (
    ("batch_size", 1, "examples per train step"),
    ("eval_batch_size", 1, "examples per evaluation batch"),
    ("total_steps", 1, "the steps the run trains"),
    ("warmup_steps", 0, "the learning-rate warmup, in steps"),
    ("log_every_steps", 1, "the period of the train/* metrics, in steps"),
    ("eval_every_steps", 0, "the period of the evaluations, in steps (0: only the final one)"),
    ("checkpoint_every_steps", 0, "the period of the checkpoints, in steps (0: only the final one)"),
)
_EPOCH_FIELDS = (
    ("total_epochs", False, "the epochs the run trains"),
    ("warmup_epochs", True, "the learning-rate warmup, in epochs"),
    ("log_every_epochs", False, "the period of the train/* metrics, in epochs"),
    ("eval_every_epochs", True, "the period of the evaluations, in epochs (0: only the final one)"),
    ("checkpoint_every_epochs", True, "the period of the checkpoints, in epochs (0: only the final one)"),
)


def check_sizes(config: ml_collections.ConfigDict) -> None:
  """Refuses, before anything is built, a size or period of `config` no run can use, naming the field and the fix.

  Checks the fields the config has (None: unset): batch sizes and step counts are integers >= 1
  (eval_every / checkpoint_every / warmup >= 0), epochs are numbers > 0 (>= 0 where 0 means
  never), at most one of X_steps and X_epochs is set, total_steps or total_epochs is, warmup_steps
  <= total_steps, and keep_checkpoints is None (keep all) or >= 1.
  """
  def refuse(name: str, value: Any, wanted: str, what: str) -> None:
    raise ValueError(f"config.{name}={value!r}: expected {wanted} ({what}); set --config.{name} to such a value")

  for name, least, what in _STEP_FIELDS:
    value = config.get(name)
    if value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
      refuse(name, value, f"an integer >= {least}", what)
  for name, zero_ok, what in _EPOCH_FIELDS:
    value = config.get(name)
    if value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
        value < 0 if zero_ok else value <= 0):
      refuse(name, value, "a number >= 0" if zero_ok else "a number > 0", what)
  for prefix in ("total", "warmup", "log_every", "eval_every", "checkpoint_every"):
    step_count, epochs = config.get(f"{prefix}_steps"), config.get(f"{prefix}_epochs")
    if step_count is not None and epochs is not None:
      raise ValueError(f"config: set only one of {prefix}_steps={step_count} and {prefix}_epochs={epochs}; set the "
                       f"other to None (--config.{prefix}_epochs=None)")
  if ("total_steps" in config or "total_epochs" in config) and config.get("total_steps") is None and config.get(
      "total_epochs") is None:
    raise ValueError("config: set total_steps or total_epochs (--config.total_steps=N); both are None")
  total, warmup = config.get("total_steps"), config.get("warmup_steps")
  if total is not None and warmup is not None and warmup > total:
    raise ValueError(f"config.warmup_steps={warmup} is longer than config.total_steps={total}; set "
                     f"--config.warmup_steps to at most {total}")
  keep = config.get("keep_checkpoints", 1)
  if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
    raise ValueError(f"config.keep_checkpoints={keep!r}: expected an integer >= 1 (1 keeps only the latest "
                     f"checkpoint) or None (keep all); 0 would delete every checkpoint, the final one too")


PACKAGED_PREFIX = "tokax:"


def _packaged_configs_dir() -> str:
  """The folder of the configs that ship with tokax: the tokax.configs package (pip or editable install),
  else the configs/ folder beside a source checkout's tokax/ (the repository on PYTHONPATH)."""
  import importlib.resources
  import os

  try:
    folder = importlib.resources.files("tokax.configs")
  except ModuleNotFoundError:
    folder = None
  if folder is not None and os.path.isdir(str(folder)):
    return str(folder)
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(repo, "configs")


def packaged_configs() -> list[str]:
  """The names ("digits_vit.py", ...) of the config files that ship with tokax, sorted."""
  import os

  folder = _packaged_configs_dir()
  if not os.path.isdir(folder):
    return []
  return sorted(name for name in os.listdir(folder) if name.endswith(".py") and not name.startswith("_"))


def config_path(name: str) -> str:
  """The path of the packaged config file `name` ("glyphs_vit.py"; the ".py" may be left out).

  The configs ship inside the package (the repository's configs/ folder is tokax.configs), so this works
  after a pip install as well as in a source checkout; notebooks use it instead of "../configs/x.py".
  `python -m tokax.train --config tokax:<name>.py[:arg]` names the same file on the command line.

  Raises:
    ValueError: naming the available configs, when there is no such file.
  """
  import os

  file_name = name if name.endswith(".py") else name + ".py"
  if not file_name or os.path.basename(file_name) != file_name or file_name.startswith("_"):
    raise ValueError(f"packaged config {name!r}: expected a file name like 'digits_vit.py'; available: "
                     f"{', '.join(packaged_configs())}")
  path = os.path.join(_packaged_configs_dir(), file_name)
  if not os.path.isfile(path):
    raise ValueError(f"tokax ships no config {name!r}; available: {', '.join(packaged_configs()) or '(none found)'}")
  return path


def resolve_config_spec(spec: str) -> str:
  """A config spec with a packaged name resolved: "tokax:<name>.py[:arg]" -> "<path of name>[:arg]".

  Any other spec (a file path, "configs/x.py:arg") is returned unchanged.
  """
  if not spec.startswith(PACKAGED_PREFIX):
    return spec
  name, colon, arg = spec[len(PACKAGED_PREFIX):].partition(":")
  return config_path(name) + colon + arg


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """get_config(arg) of a config file named as on the command line: "configs/x.py[:arg]" or "tokax:x.py[:arg]".

  "tokax:<name>.py[:arg]" is a config that ships with tokax (config_path). A relative path is taken from
  the working directory, then from the repository root.
  """
  import importlib.util
  import os

  path, _, arg = resolve_config_spec(spec).partition(":")
  if not os.path.isfile(path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.isfile(os.path.join(repo, path)):
      path = os.path.join(repo, path)
    else:
      raise ValueError(f"config file {path!r} not found (from {spec!r}); give a path like configs/<name>.py[:arg] "
                       f"or a packaged config tokax:<name>.py[:arg], one of {', '.join(packaged_configs())}")
  module_spec = importlib.util.spec_from_file_location(f"_tokax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path!r} defines no get_config(arg)")
  return module.get_config(arg or None)
