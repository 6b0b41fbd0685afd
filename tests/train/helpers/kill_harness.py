"""`python kill_harness.py MODE STEP <tokax.train flags>`: the trainer's command line, with a signal at a set point.

MODE sigkill-mid-save: SIGKILL when orbax is about to commit checkpoint STEP (its items are written
  to a temporary directory that is not yet renamed): a crash in the middle of a save.
MODE sigterm: SIGTERM to this process after step STEP is dispatched: a pre-emption notice.
"""
import os
import signal
import sys


def main():
  mode, step = sys.argv[1], int(sys.argv[2])
  sys.argv = [sys.argv[0], *sys.argv[3:]]
  if mode == "sigkill-mid-save":
    from orbax.checkpoint._src.path import atomicity

    commit = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
      if self._final_path.name == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
      return await commit(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize
  elif mode == "sigterm":
    from tokax.train import run as training

    push = training.TrainLog.push

    def push_then_signal(self, at, metrics):
      push(self, at, metrics)
      if at == step:
        os.kill(os.getpid(), signal.SIGTERM)

    training.TrainLog.push = push_then_signal
  else:
    raise SystemExit(f"unknown mode {mode!r}")
  from tokax.train.main import run

  run()


if __name__ == "__main__":
  main()
