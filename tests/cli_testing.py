"""`python -m tokax.train ARGS` run in this process, through absl's app.run as the command line does.

absl keeps flags across parses and config_flags defines a `--config.<field>` override flag the
first time it sees one (reading the overrides from sys.argv): run_train_cli drops those override
flags, gives the bool flags their values explicitly and sets sys.argv, so that each call parses
as a fresh process would.
"""
import sys

from absl import app, flags


def run_train_cli(*args: str, allow_config_change: bool = False, resume_from_previous_good: bool = False) -> None:
  """Runs tokax.train's main on `args` (flags after the program name); returns when it exits with status 0.

  An exception in training propagates as it would to the shell; a nonzero exit is an AssertionError.
  --tensorboard (default None) is reset first, so a value from an earlier call does not carry over.
  """
  from tokax.train import main as cli

  for name in [name for name in flags.FLAGS if name.startswith("config.")]:
    delattr(flags.FLAGS, name)
  flags.FLAGS["tensorboard"].unparse()
  argv = ["tokax.train", *args, f"--allow_config_change={allow_config_change}",
          f"--resume_from_previous_good={resume_from_previous_good}"]
  saved, sys.argv = sys.argv, argv
  try:
    app.run(cli.main, argv=argv)
  except SystemExit as exited:
    assert not exited.code, f"tokax.train exited with status {exited.code}"
  finally:
    sys.argv = saved
