"""What a run keeps in its workdir besides checkpoints and metrics: the lock and the history of its configs.

  lock            {"pid", "host", "started", "command"} of the trainer writing into the workdir, held
                  with fcntl.flock on the open file: the kernel releases it when that process ends
                  (however it ends), so a lock left by a dead trainer never blocks the next one
  config.json     the resolved config of the latest (re)start: what load_run rebuilds the run from
  configs/config.<step>.json   every config the run used, named by the step it took over from
                  (config.0.json: the first one)

A run resumed with a config that differs in a field that changes what is trained (anything but
RUNTIME_FIELDS) is refused with the differing fields, old -> new, unless the caller says the change
is meant (allow_config_change); the old config stays in configs/. See docs/robustness.md.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from absl import logging

LOCK_FILE = "lock"
CONFIG_FILE = "config.json"
HISTORY_DIR = "configs"

# Fields that may differ between the run that wrote a checkpoint and the run resuming it: they
# change how the run is placed, read, logged or saved, not the train state it computes (with
# another mesh the sums may round differently; restoring onto another mesh is a feature). A dotted
# name covers everything under it.
RUNTIME_FIELDS = (
    "progress_bar", "log_every_steps", "log_every_epochs", "eval_every_steps", "eval_every_epochs",
    "checkpoint_every_steps", "checkpoint_every_epochs", "keep_checkpoints", "eval_batch_size",
    "mesh", "sharding", "distributed", "data.num_threads", "data.num_workers",
    "allow_config_change", "resume_from_previous_good", "tensorboard",
    # the attention kernel computes the same attention: a resume may switch it (and older runs lack the fields)
    "model.attention", "model.interpret")


class WorkdirLockedError(RuntimeError):
  """Another live trainer holds the workdir's lock."""


class ConfigChangedError(ValueError):
  """A resume whose config differs from the one that wrote the checkpoint, without allow_config_change."""


class WorkdirLock:
  """An exclusive lock on `workdir` for one trainer (process 0 of a multi-process run; other processes
  hold nothing). Raises WorkdirLockedError naming the holder's pid and host when another one has it.

    with WorkdirLock(workdir):
      ...  # write checkpoints, metrics, config.json

  Notes: fcntl.flock locks an open file description, so a second trainer in the same process is
  refused too; on NFS Linux maps flock to POSIX byte-range locks, which the server enforces.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def __enter__(self) -> "WorkdirLock":
    if jax.process_index() != 0:
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read_holder(fd)
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise
      raise WorkdirLockedError(
          f"workdir {os.path.dirname(self.path)} is in use by another trainer ({holder}); two trainers in one "
          f"workdir would overwrite each other's checkpoints and metrics. Wait for it to end or stop it, or give "
          f"this run another --workdir") from None
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # the file stays: unlinking a flock file races with the next trainer's open
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _read_holder(fd: int) -> str:
  try:
    record = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
  except (OSError, ValueError):
    record = {}
  if "pid" not in record:
    return "its pid and host are not recorded yet"
  return f"pid {record['pid']} on host {record.get('host', '?')}, since {record.get('started', '?')}"


# --- configs -----------------------------------------------------------------------------------------

def _merged(values: dict[str, Any], resolved: Mapping[str, Any]) -> dict[str, Any]:
  out = dict(values)
  for key, value in resolved.items():
    out[key] = _merged(out.get(key) or {}, value) if isinstance(value, Mapping) else value
  return out


def resolved_config(config: ml_collections.ConfigDict, resolved: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The config with `resolved` (derived values, nested dicts merged in) as the JSON data config.json holds."""
  return json.loads(json.dumps(_merged(config.to_dict(), resolved or {}), sort_keys=True, default=str))


def read_config(workdir: str) -> dict[str, Any] | None:
  """workdir/config.json as data, or None when there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(values, Mapping) and values:
    out = {}
    for key, value in values.items():
      out.update(_flat(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: values}


def _runtime(name: str) -> bool:
  return any(name == field or name.startswith(field + ".") for field in RUNTIME_FIELDS)


_MISSING = object()  # a field one of the two configs lacks


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
  """[(dotted field, old value, new value)] of every leaf that differs between two config.json dicts, sorted."""
  flat_old, flat_new = _flat(old), _flat(new)
  pairs = ((name, flat_old.get(name, _MISSING), flat_new.get(name, _MISSING))
           for name in sorted(set(flat_old) | set(flat_new)))
  return [(name, old, new) for name, old, new in pairs if old != new]


def _describe(changes: list[tuple[str, Any, Any]]) -> str:
  text = lambda value: "<unset>" if value is _MISSING else json.dumps(value)
  return "; ".join(f"{name}: {text(old)} -> {text(new)}" for name, old, new in changes)


def check_resume_config(workdir: str, config: Mapping[str, Any], step: int, *, allow_change: bool) -> None:
  """Refuses to resume the checkpoint at `step` with a `config` (resolved_config) that trains differently.

  Compares with workdir/config.json (nothing to compare without one); a change in a field outside
  RUNTIME_FIELDS raises ConfigChangedError listing every such field as `name: old -> new`, unless
  `allow_change`, when it is logged as a warning.
  """
  old = read_config(workdir)
  if old is None:
    logging.warning("resuming %s at step %d without a config.json to compare the config with", workdir, step)
    return
  changes = config_changes(old, config)
  material = [change for change in changes if not _runtime(change[0])]
  if not material:
    return
  if not allow_change:
    raise ConfigChangedError(
        f"{workdir} holds a run at step {step} trained with another config; resuming would continue it with "
        f"{len(material)} changed field(s): {_describe(material)}. If this is meant, pass --allow_config_change "
        f"(python -m tokax.train) or allow_config_change=True (tokax.train.run.train): the old config is kept under "
        f"{os.path.join(workdir, HISTORY_DIR)}. Otherwise rerun with the old values, or give a fresh --workdir")
  logging.warning("resuming %s at step %d with a changed config (allow_config_change): %s", workdir, step,
                  _describe(material))


def save_config(workdir: str, config: Mapping[str, Any], step: int) -> None:
  """Writes `config` (resolved_config) as workdir/config.json and, when it differs from the previous one, as
  configs/config.<step>.json too (process 0); a workdir from before the history gets its old config as
  configs/config.0.json first."""
  if jax.process_index() != 0:
    return
  old = read_config(workdir)
  history = os.path.join(workdir, HISTORY_DIR)
  if old is not None and not os.path.isdir(history):
    _write_json(os.path.join(history, "config.0.json"), old)  # a workdir from before the history
  if old != config:
    if old is not None:
      logging.info("config of %s from step %d on: %s", workdir, step, _describe(config_changes(old, config)))
    _write_json(os.path.join(history, f"config.{step}.json"), config)
  _write_json(os.path.join(workdir, CONFIG_FILE), config)


def _write_json(path: str, values: Mapping[str, Any]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(values, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
