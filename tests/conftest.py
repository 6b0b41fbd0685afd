"""Shared test set-up: tests run on the CPU in float32 with the golden files beside them.

Every process of a test run (the pytest-xdist workers, the CLIs and notebook kernels the tests start)
shares one persistent XLA compilation cache, made for the run and removed after it: most of the suite's
time is spent compiling small programs, and many are the same program compiled in another process.
For the same reason XLA:CPU compiles with LLVM's optimisation off (--xla_backend_optimization_level=0):
it changes how fast the code runs, not what it computes (no fast-math either way), and it cut the
CPU time of compile-bound tests by 35-45% (the official-parity tests included).
"""
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process (the xdist controller) makes it
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="tokax-tests-jax-cache-")
  os.environ["TOKAX_TESTS_CACHE_OWNER"] = str(os.getpid())
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
TESTS = pathlib.Path(__file__).parent
if str(TESTS) not in sys.path:
  sys.path.insert(0, str(TESTS))


import chex  # noqa: E402
import pytest  # noqa: E402


def pytest_unconfigure(config):
  if os.environ.get("TOKAX_TESTS_CACHE_OWNER") == str(os.getpid()):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
  """chex.assert_max_traces counts per function name across tests; start every test from zero."""
  chex.clear_trace_counter()
  yield
