"""`python -m tokax.train --config configs/x.py --workdir DIR`: see tokax/train/main.py."""
from tokax.train.main import run

if __name__ == "__main__":
  run()
