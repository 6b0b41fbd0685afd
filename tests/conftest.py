"""Shared test set-up: tests run on the CPU in float32 with the golden files beside them."""
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
TESTS = pathlib.Path(__file__).parent
if str(TESTS) not in sys.path:
  sys.path.insert(0, str(TESTS))


import chex  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
  """chex.assert_max_traces counts per function name across tests; start every test from zero."""
  chex.clear_trace_counter()
  yield
