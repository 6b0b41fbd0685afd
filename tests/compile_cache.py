"""A persistent XLA compilation cache for tests that train the same config more than once."""
import contextlib

import jax


@contextlib.contextmanager
def persistent_compilation_cache(directory):
  """Inside the block, every compiled program is stored in `directory` and a repeat compile loads it."""
  from jax._src import compilation_cache  # reset_cache: the cache object is built once per process

  options = {"jax_compilation_cache_dir": str(directory), "jax_persistent_cache_min_compile_time_secs": 0,
             "jax_persistent_cache_min_entry_size_bytes": 0}
  saved = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
    compilation_cache.reset_cache()
