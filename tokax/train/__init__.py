"""Training: the absl entry point (main.py), the one run skeleton, its tasks, the jitted steps, checkpoints.

run.py is the skeleton every run goes through (placement, restore-or-init, the step loop with
one-step-late logging, periodic / final / SIGTERM checkpoints, evaluation); tasks/ holds what
differs per task (classifier, tokenizer, xar), chosen by config.task. restore.load_run(workdir)
rebuilds any run from its config.json and latest checkpoint.

sharding.py turns config.mesh and config.sharding into a mesh and per-leaf NamedShardings; the
train data of every task goes through tokax.data.pipeline, whose position is saved with the
checkpoints (checkpoint.py), which refuse foreign or damaged directories.

Run `python -m tokax.train --config configs/<name>.py[:arg] --workdir DIR`.
"""
