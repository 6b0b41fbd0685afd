"""Training: the absl entry point (main.py), the trainer, the jitted step, checkpoints and metrics.

Run `python -m tokax.train --config configs/<name>.py[:arg] --workdir DIR`.
"""
