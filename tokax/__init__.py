"""tokax: token-efficient vision models in JAX/Flax.

Importing tokax does no I/O and starts no device; submodules are imported on use.
"""
__version__ = "0.1.0"
