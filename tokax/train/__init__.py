"""Training: the absl entry point (main.py), the trainer, the jitted step, checkpoints and metrics.

trainer.py dispatches on config.task to the classifier (itself), xar_trainer.py or
tokenizer_trainer.py; all three run loop.py (placement, restore-or-init, the step loop with
one-step-late logging, periodic / final / SIGTERM checkpoints).

sharding.py turns config.mesh and config.sharding into a mesh and per-leaf NamedShardings;
batch_stream.py feeds each process its rows of the global batch and saves its position with
the checkpoints (checkpoint.py), which refuse foreign or damaged directories.

Run `python -m tokax.train --config configs/<name>.py[:arg] --workdir DIR`.
"""
