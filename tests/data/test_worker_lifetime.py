"""A trainer killed with SIGKILL takes its input worker processes (and Python's resource tracker) with it."""
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

# A trainer's input side: a pipeline with 2 worker processes, one batch taken, then it blocks.
TRAINER = """
import sys, time
import numpy as np
from tokax.data import pipeline
source = [{"image": np.full((4, 4, 3), i, np.uint8), "label": i} for i in range(16)]
it = pipeline.DataIterator(source, batch_size=2, num_workers=2, preprocess="flip_lr")
next(it)
print("ready", flush=True)
time.sleep(600)
"""


def _children(pid: int) -> dict[int, str]:
  """{pid: command line} of the processes whose parent is `pid` (from /proc)."""
  out = {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
      cmdline = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
      continue
    if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
      out[int(entry)] = cmdline
  return out


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie waiting for a reaper counts as gone)."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return False
  return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_and_resource_tracker_end_when_the_trainer_is_killed():
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  trainer = subprocess.Popen([sys.executable, "-c", TRAINER], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  children = {}
  try:
    assert trainer.stdout.readline().strip() == "ready", trainer.stderr.read()
    children = _children(trainer.pid)
    workers = [p for p, cmd in children.items() if "spawn_main" in cmd]
    trackers = [p for p, cmd in children.items() if "resource_tracker" in cmd]
    assert len(workers) == 2 and len(trackers) == 1, children
    os.kill(trainer.pid, signal.SIGKILL)
    trainer.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in children):
      time.sleep(0.1)
    assert [p for p in children if _alive(p)] == [], {p: cmd for p, cmd in children.items() if _alive(p)}
  finally:
    if trainer.poll() is None:
      trainer.kill()
      trainer.wait()
    for pid in [p for p in children if _alive(p)]:  # left over only when the test failed
      os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, forks")
def test_die_with_parent_watch_thread_fallback():
  """Off the main thread (or off Linux) a worker watches its parent's pid instead of the kernel's signal."""
  code = ("import os, sys, time\n"
          "from tokax.data import pipeline\n"
          "if os.fork() == 0:\n"
          "  print(pipeline.die_with_parent(os.getppid(), parent_death_signal=False, interval_s=0.05), os.getpid(),"
          " flush=True)\n"
          "  time.sleep(60)\n"
          "  os._exit(0)\n"
          "time.sleep(60)\n")
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
  try:
    way, child = parent.stdout.readline().split()
    assert way == "watch" and _alive(int(child))
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(int(child)):
      time.sleep(0.05)
    assert not _alive(int(child))
  finally:
    if parent.poll() is None:
      parent.kill()
      parent.wait()
