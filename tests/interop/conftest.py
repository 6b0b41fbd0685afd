"""The interop tests import timm through torch_compat (see tests/torch_compat.py)."""
import pytest


@pytest.fixture(scope="session")
def timm():
  from torch_compat import import_timm
  return import_timm()
