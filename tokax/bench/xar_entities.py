r"""Train xAR on digits for every entity kind and print one table (entity, steps, loss, accuracy, FD, time).

  # on an H100 (about 2-4 minutes per row at 3,000 steps):
  python -m tokax.bench.xar_entities --workdir /tmp/xar_entities --steps 3000 --num 1000 \
      --rows cell4,cell4_tf,image,cell2,subsample2,scale,patch
  # CPU smoke run:
  python -m tokax.bench.xar_entities --workdir /tmp/xar_smoke --steps 4 --num 20 --rows cell4,image --runlocal

Each row trains configs/digits_xar.py with that entity (`_tf`: teacher forcing), samples `--num`
images with the EMA weights (Euler, --num_steps, --cfg with the linear ramp, and --cfg_constant
rows if asked), and scores them with tokax.bench.xar_metrics. A JSON line per row goes to
<workdir>/table.jsonl; the markdown table is printed at the end.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/xar_entities", "Parent directory of the per-row runs.")
_STEPS = flags.DEFINE_integer("steps", 3000, "Training steps per row.")
_NUM = flags.DEFINE_integer("num", 1000, "Samples per row.")
_ROWS = flags.DEFINE_string("rows", "cell4,cell4_tf,image,cell2,subsample2,scale,patch", "Comma-separated rows.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 25, "Flow steps per entity.")
_CFG = flags.DEFINE_float("cfg", 2.0, "Guidance weight.")
_CFG_CONSTANT = flags.DEFINE_bool("cfg_constant", False, "Also score each row with constant guidance.")
_METHOD = flags.DEFINE_enum("method", "euler", ["euler", "em"], "Sampler.")
_RUNLOCAL = flags.DEFINE_bool("runlocal", False, "The runlocal config (tiny model).")
_CLASSIFIER_STEPS = flags.DEFINE_integer("classifier_steps", 800, "Steps of the scoring classifier.")

_ROW = re.compile(r"^(patch|cell|subsample|scale|image)(\d*)(_tf)?$")
CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "digits_xar.py"


def _config(row: str):
  m = _ROW.match(row)
  if m is None:
    raise app.UsageError(f"--rows: bad row {row!r}; expected e.g. cell4, cell4_tf, image, subsample2, scale, patch")
  spec = importlib.util.spec_from_file_location("digits_xar", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  arg = f"entity={m[1]}" + (f",entity_size={m[2]}" if m[2] else "") + (",teacher_forcing" if m[3] else "") \
      + (",runlocal" if _RUNLOCAL.value else "")
  config = module.get_config(arg)
  config.total_steps = _STEPS.value
  config.checkpoint_every_steps = 0
  config.progress_bar = False
  return config


def main(argv: list[str]) -> None:
  del argv
  import numpy as np
  from tokax.bench import xar_metrics
  from tokax.data import offline
  from tokax.sample import generate
  from tokax.train import logging as metric_logging
  from tokax.train import run as training
  from tokax.train.tasks import xar
  metric_logging.quiet_orbax_info()
  train_ds = offline.load("digits", "train", image_size=32)
  test_ds = offline.load("digits", "test", image_size=32)
  t0 = time.perf_counter()
  clf = xar_metrics.train_classifier(train_ds, test_ds, steps=_CLASSIFIER_STEPS.value)
  print(json.dumps({"classifier_test_accuracy": clf.test_accuracy, "seconds": time.perf_counter() - t0}))
  os.makedirs(_WORKDIR.value, exist_ok=True)
  rows = []
  schedules = ["linear"] + (["constant"] if _CFG_CONSTANT.value else [])
  for row in _ROWS.value.split(","):
    config = _config(row)
    workdir = os.path.join(_WORKDIR.value, row)
    t0 = time.perf_counter()
    result = training.train(config, workdir)  # config.task == 'xar'
    train_s = time.perf_counter() - t0
    labels = (np.arange(_NUM.value) % train_ds.num_classes).astype(np.int32)
    for schedule in schedules:
      tokens, sample_s = generate(result.model, result.params, labels, batch_size=1000, seed=0,
                                  num_steps=_NUM_STEPS.value, cfg=_CFG.value, cfg_schedule=schedule,
                                  method=_METHOD.value)
      latent = xar.latent_from_config(config)
      images = np.asarray(latent.decode(result.model.entities.from_sequence(tokens)))
      scores = xar_metrics.score_samples(clf, images, labels, train_ds, test_ds)
      record = {"row": row, "cfg_schedule": schedule, "ar_steps": result.model.entities.num_entities,
                "steps": result.step, "train_loss": result.metrics.get("train/final_loss"), "train_s": train_s,
                "sample_s": sample_s, **scores}
      rows.append(record)
      print(json.dumps(record), flush=True)
      with open(os.path.join(_WORKDIR.value, "table.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
  print(f"\nclassifier test accuracy {clf.test_accuracy:.3f}; FD floor (test vs train) {rows[0]['fd_floor']:.2f}; "
        f"NN floor (test to train) {rows[0]['nn_floor']:.3f}\n")
  print("| entity | AR steps | cfg | steps | train loss | accuracy | FD | NN to train | train s | sample s |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['row']} | {r['ar_steps']} | {_CFG.value} {r['cfg_schedule']} | {r['steps']} | {r['train_loss']:.4f} | "
          f"{r['accuracy']:.3f} | {r['fd']:.2f} | {r['nn_train']:.3f} | {r['train_s']:.0f} | {r['sample_s']:.2f} |")


if __name__ == "__main__":
  app.run(main)
