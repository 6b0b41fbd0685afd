"""TensorBoard summaries beside metrics.jsonl: the same numbers at the same steps, a resume that draws each step
once, the tokenizer's reconstructions as an image, and the error that names the extra when tensorboardX is
missing.

The event files are read back here with the rule TensorBoard's EventAccumulator applies (files in name order; a
SessionLog START at step s hides what earlier files wrote at s and after), so the test needs only tensorboardX.
"""
import io
import json
import pathlib
import shutil
import struct
import sys

import numpy as np
import PIL.Image
import pytest

from cli_testing import run_train_cli
from tokax.train import logging as metric_logging
from tokax.train import run as training
from tokax.train.config_utils import load_config_file

tensorboardX = pytest.importorskip("tensorboardX")
from tensorboardX.proto import event_pb2  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]


def _digits_config():
  """configs/digits_vit.py:runlocal for 6 steps: log every step, evaluate every 2, checkpoints 2, 4, 6."""
  config = load_config_file("tokax:digits_vit.py:runlocal")
  config.total_steps, config.checkpoint_every_steps, config.keep_checkpoints = 6, 2, 3
  config.progress_bar = False
  config.tensorboard = True
  return config


def _events(path):
  """The Event protos of one event file (TFRecord: length, its CRC, the bytes, their CRC)."""
  data, offset = path.read_bytes(), 0
  while offset < len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    event = event_pb2.Event()
    event.ParseFromString(data[offset + 12:offset + 12 + length])
    yield event
    offset += 12 + length + 4


def read_tensorboard(logdir):
  """({tag: [(step, value)]}, {tag: [(step, (H, W, C) uint8)]}) as TensorBoard shows them."""
  scalars, images = {}, {}
  for path in sorted(logdir.glob("*tfevents*")):
    for event in _events(path):
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        for series in (scalars, images):
          for tag, points in series.items():
            series[tag] = [(step, value) for step, value in points if step < event.step]
      for value in event.summary.value:
        if value.HasField("image"):
          pixels = np.asarray(PIL.Image.open(io.BytesIO(value.image.encoded_image_string)))
          images.setdefault(value.tag, []).append((event.step, pixels))
        else:
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars, images


def _last_per_step(records):
  """{(name, step): value} of metrics.jsonl records, the later record winning (a resumed run rewrites steps)."""
  return {(name, r["step"]): value for r in records for name, value in r.items() if name != "step"}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
  """6 steps, then checkpoint 6 lost (as in a crash during the last save) and the run resumed from 4."""
  workdir = tmp_path_factory.mktemp("tb")
  training.train(_digits_config(), str(workdir))
  first_session = read_tensorboard(workdir / "tensorboard")
  shutil.rmtree(workdir / "checkpoints" / "6")
  result = training.train(_digits_config(), str(workdir))
  return workdir, result, first_session


@pytest.mark.slow
def test_scalars_equal_metrics_jsonl_at_the_same_steps(resumed_run):
  workdir, result, (first_scalars, _) = resumed_run
  records = metric_logging.read_metrics(workdir / "metrics.jsonl")
  expected = _last_per_step(records)
  scalars, _ = read_tensorboard(workdir / "tensorboard")
  shown = {(tag, step): value for tag, points in scalars.items() for step, value in points}
  assert set(shown) == set(expected)  # every number, under the same name and step
  for key, value in expected.items():
    assert shown[key] == np.float32(value), key  # TensorBoard keeps float32
  assert {"train/loss", "train/lr", "train/compile_s", "val/accuracy", "test/accuracy"} <= set(scalars)
  assert shown[("test/accuracy", 6)] == np.float32(result.metrics["test/accuracy"])
  assert [step for step, _ in first_scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_resume_draws_each_step_once(resumed_run):
  workdir, _, (first_scalars, _) = resumed_run
  files = sorted((workdir / "tensorboard").glob("*tfevents*"))
  assert len(files) == 2
  starts = [e.step for e in _events(files[1]) if e.HasField("session_log")]
  assert starts == [5]  # the resumed session hides steps 5 and 6 of the first
  raw_steps = [e.step for f in files for e in _events(f) for v in e.summary.value if v.tag == "train/loss"]
  assert raw_steps == [1, 2, 3, 4, 5, 6, 5, 6]  # both sessions wrote 5 and 6 ...
  scalars, _ = read_tensorboard(workdir / "tensorboard")
  for tag, points in scalars.items():
    steps = [step for step, _ in points]
    assert len(steps) == len(set(steps)), tag  # ... TensorBoard shows each once: the resumed session's
  assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
  assert scalars["train/loss"][:4] == first_scalars["train/loss"][:4]


@pytest.mark.slow
def test_tokenizer_reconstructions_are_an_image(tmp_path):
  config = load_config_file("tokax:digits_tokenizer.py:runlocal")
  config.model.update(filters=8, norm_groups=4, channel_multipliers=(1,))
  config.total_steps, config.eval_every_steps, config.checkpoint_every_steps = 1, 0, 0
  config.progress_bar = False
  config.tensorboard = True
  result = training.train(config, str(tmp_path))
  assert "val/reconstructions" not in result.metrics and np.isfinite(result.metrics["val/psnr"])
  records = metric_logging.read_metrics(tmp_path / "metrics.jsonl")
  assert not any("val/reconstructions" in r for r in records)  # metrics.jsonl keeps the numbers
  scalars, images = read_tensorboard(tmp_path / "tensorboard")
  assert scalars["val/psnr"] == [(1, np.float32(result.metrics["val/psnr"]))]
  [(step, pixels)] = images["val/reconstructions"]
  cell = 32 + 2  # digits at 32 px, 2 px of padding
  assert step == 1 and pixels.shape == (2 * cell + 2, 8 * cell + 2, 3)  # 8 originals above 8 reconstructions


def test_missing_tensorboardx_is_an_error_naming_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` raises ImportError
  with pytest.raises(ImportError, match=r"pip install 'tokax\[tensorboard\]'"):
    training.train(_digits_config(), str(tmp_path))
  assert not list(tmp_path.iterdir())  # refused before anything was written
  assert metric_logging.use_tensorboard(False) is False


def test_unset_is_off_and_the_command_line_flag_turns_it_on(tmp_path):
  assert metric_logging.use_tensorboard(None) is False  # opt-in: no tensorboard/ unless asked for
  config = REPO / "configs" / "digits_vit.py"
  run_train_cli(f"--config={config}:runlocal", f"--workdir={tmp_path / 'off'}", "--config.total_steps=2",
                "--config.progress_bar=False")
  assert not (tmp_path / "off" / "tensorboard").exists()
  run_train_cli(f"--config={config}:runlocal", f"--workdir={tmp_path / 'on'}", "--config.total_steps=2",
                "--config.progress_bar=False", "--tensorboard")
  scalars, _ = read_tensorboard(tmp_path / "on" / "tensorboard")
  got = {(step, tag): value for tag, points in scalars.items() for step, value in points}
  lines = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
  want = {(r["step"], k): v for r in lines for k, v in r.items() if isinstance(v, float)}
  assert want and {key: got[key] for key in want} == pytest.approx(want, rel=1e-6)


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(metric_logging.jax, "process_index", lambda: 1)
  with metric_logging.MetricWriter(str(tmp_path / "metrics.jsonl"), tensorboard_dir=str(tmp_path / "tb")) as writer:
    writer.write(1, {"train/loss": 1.0, "val/image": metric_logging.Image(np.zeros((4, 4, 3)))})
  assert not list(tmp_path.iterdir())


def test_writer_sessions_in_one_second_keep_separate_files(tmp_path):
  for step in (1, 2):
    with metric_logging.MetricWriter(str(tmp_path / "metrics.jsonl"), tensorboard_dir=str(tmp_path / "tb"),
                                     purge_step=step if step > 1 else None) as writer:
      writer.write(step, {"loss": float(step), "name": "not a number", "counts": [1, 2]})
  scalars, _ = read_tensorboard(tmp_path / "tb")
  assert scalars == {"loss": [(1, 1.0), (2, 2.0)]}  # numbers only; both sessions' files kept
  assert len(list((tmp_path / "tb").glob("*tfevents*"))) == 2
