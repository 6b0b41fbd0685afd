"""Shared test set-up: tests run on the CPU in float32 with the golden files beside them."""
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
TESTS = pathlib.Path(__file__).parent
if str(TESTS) not in sys.path:
  sys.path.insert(0, str(TESTS))
