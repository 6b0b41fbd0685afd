"""Training: the absl entry point (main.py), the trainer, the jitted step, checkpoints and metrics.

sharding.py turns config.mesh and config.sharding into a mesh and per-leaf NamedShardings;
batch_stream.py feeds each process its rows of the global batch and saves its position with
the checkpoints (checkpoint.py), which refuse foreign or damaged directories.

Run `python -m tokax.train --config configs/<name>.py[:arg] --workdir DIR`.
"""
