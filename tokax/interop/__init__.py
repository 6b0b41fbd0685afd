"""Load other libraries' checkpoints into tokax parameters."""
