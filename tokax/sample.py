"""Sample an xAR trained by `python -m tokax.train` (config.task = "xar") from its workdir.

  python -m tokax.sample --workdir /tmp/xar_cell --num 1000
  python -m tokax.sample --workdir /tmp/xar_cell --num 1000 --cfg 2.0 --method em --num_steps 40

Writes <out>/samples.png (an image grid, one column per class) and <out>/samples.npz (images
(N, H, W, 3) in [0, 1], labels (N,), tokens (N, L, C) in entity order, seconds); <out> defaults to
the workdir. Labels cycle through the classes; sampling uses the EMA weights of the latest
checkpoint, batch by batch through one jit-compiled sampler. The tokens decode through the run's
latent: pixel patches, or the decoder of the tokenizer run in config.latent.workdir (the checkpoint
step and latent scale the xAR run trained on, from its config.json).
"""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from tokax.models.latent import Latent
from tokax.models.xar import XAR, sample


def _define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> dict:
  """The command line's flags (defined only when run as a program, so importing this module is free)."""
  fv = dict(flag_values=flag_values)
  return dict(
      workdir=flags.DEFINE_string("workdir", None, "Workdir of an xAR training run (config.json, checkpoints/).", **fv),
      num=flags.DEFINE_integer("num", 100, "Number of samples.", **fv),
      batch_size=flags.DEFINE_integer("batch_size", 500, "Samples per jit call.", **fv),
      num_steps=flags.DEFINE_integer("num_steps", None, "Flow steps per entity (default: the config's).", **fv),
      cfg=flags.DEFINE_float("cfg", None, "Guidance weight (default: the config's).", **fv),
      cfg_schedule=flags.DEFINE_enum("cfg_schedule", None, ["linear", "constant"], "Per-entity guidance schedule.",
                                     **fv),
      method=flags.DEFINE_enum("method", None, ["euler", "em"], "ODE (euler) or SDE (em) sampler.", **fv),
      seed=flags.DEFINE_integer("seed", 0, "Noise seed.", **fv),
      out=flags.DEFINE_string("out", None, "Output directory (default: the workdir).", **fv),
  )


def check_xar_run(workdir: str) -> None:
  """Refuses (RunError naming config.task) a workdir that holds no xAR run, before any checkpoint is read."""
  from tokax.train.tasks.base import RunError, read_config

  task = read_config(workdir).get("task", "classifier")
  if task != "xar":
    raise RunError(f"--workdir {workdir!r} holds a {task!r} run (config.json task={task!r}); tokax.sample draws "
                   "images from a class-conditional xAR generator: give the workdir of a run trained with "
                   "config.task='xar' (e.g. python -m tokax.train --config configs/digits_xar.py); a classifier "
                   "is evaluated with python -m tokax.evaluate --model WORKDIR")


def make_sampler(model: XAR, *, num_steps: int, cfg: float, cfg_schedule: str, method: str):
  """jit(params, labels (B,), rng) -> (B, L, C) tokens."""
  return jax.jit(lambda params, labels, rng: sample(model, params, labels, rng, num_steps=num_steps, cfg=cfg,
                                                    cfg_schedule=cfg_schedule, method=method))


def generate(model: XAR, params, labels: np.ndarray, *, batch_size: int, seed: int, **sampler_kwargs
             ) -> tuple[np.ndarray, float]:
  """(N, L, C) tokens for `labels` (N,), padded to whole batches; also the seconds spent after compiling."""
  run = make_sampler(model, **sampler_kwargs)
  n = len(labels)
  batch_size = min(batch_size, n)
  padded = np.concatenate([labels, np.zeros((-n) % batch_size, labels.dtype)])
  out, seconds = [], 0.0
  for i, start in enumerate(range(0, len(padded), batch_size)):
    y = jnp.asarray(padded[start:start + batch_size])
    rng = jax.random.fold_in(jax.random.key(seed), i)
    if i == 0:
      jax.block_until_ready(run(params, y, rng))  # compile outside the timing
    t0 = time.perf_counter()
    out.append(np.asarray(jax.block_until_ready(run(params, y, rng))))
    seconds += time.perf_counter() - t0
  return np.concatenate(out)[:n], seconds


def decode_tokens(model: XAR, latent: Latent, tokens: np.ndarray, *, batch_size: int) -> np.ndarray:
  """(N, L, C) tokens in entity order -> (N, H, W, 3) images in [0, 1], `batch_size` at a time through one jit
  (a tokenizer latent's decoder variables are its argument, not constants compiled into it)."""
  decode = jax.jit(lambda variables, grid: latent.bind(variables).decode(grid))
  out = [np.asarray(decode(latent.variables, model.entities.from_sequence(jnp.asarray(tokens[i:i + batch_size]))))
         for i in range(0, len(tokens), batch_size)]
  return np.concatenate(out)


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
  """(N, H, W, 3) -> one (rows * H, columns * W, 3) uint8 grid, row-major, blank cells padded."""
  n, h, w, c = images.shape
  rows = -(-n // columns)
  padded = np.concatenate([images, np.ones((rows * columns - n, h, w, c), images.dtype)])
  grid = padded.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)
  return (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)


def sample_workdir(workdir: str, num: int, *, out: str | None = None, batch_size: int = 500, seed: int = 0,
                   num_steps: int | None = None, cfg: float | None = None, cfg_schedule: str | None = None,
                   method: str | None = None) -> dict:
  """Samples `num` images from the latest checkpoint of `workdir`; writes samples.png / .npz into `out`.

  Sampler settings default to the run's config.sample. Returns a summary dict (seconds, samples/s, ...).
  """
  from PIL import Image

  from tokax.train.restore import load_run
  from tokax.train.tasks import xar

  check_xar_run(workdir)
  run = load_run(workdir)  # the EMA weights
  config, model, latent = run.config, run.model, xar.latent_from_config(run.config)
  s = config.sample
  kwargs = dict(num_steps=num_steps or s.num_steps, cfg=s.cfg if cfg is None else cfg,
                cfg_schedule=cfg_schedule or s.cfg_schedule, method=method or s.method)
  labels = (np.arange(num) % config.num_classes).astype(np.int32)
  tokens, seconds = generate(model, run.variables, labels, batch_size=batch_size, seed=seed, **kwargs)
  images = decode_tokens(model, latent, tokens, batch_size=batch_size)
  out = out or workdir
  os.makedirs(out, exist_ok=True)
  k = config.num_classes
  order = np.argsort(labels, kind="stable").reshape(k, -1).T.reshape(-1) if num % k == 0 else np.arange(num)
  Image.fromarray(image_grid(images[order], min(k, num))).save(os.path.join(out, "samples.png"))
  np.savez_compressed(os.path.join(out, "samples.npz"), images=images.astype(np.float32), labels=labels,
                      tokens=tokens.astype(np.float32), seconds=np.float32(seconds))
  return {"num": num, "seconds": seconds, "samples_per_s": num / max(seconds, 1e-9), "out": out, **kwargs}


def main(argv: list[str], flag_values: dict) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if flag_values["workdir"].value is None:
    raise app.UsageError("--workdir is required")
  from tokax.train import logging as metric_logging
  metric_logging.quiet_orbax_info()
  v = {k: f.value for k, f in flag_values.items()}
  from tokax.train.tasks.base import RunError
  try:
    summary = sample_workdir(v.pop("workdir"), v.pop("num"), **v)
  except RunError as e:  # not an xAR run, no config.json or checkpoint: the message names it and the fix
    sys.exit(f"python -m tokax.sample: error: {e}")
  print(json.dumps(summary))


if __name__ == "__main__":
  _FLAGS = _define_flags()
  app.run(lambda argv: main(argv, _FLAGS))
