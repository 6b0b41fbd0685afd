"""tokax: token-efficient vision models in JAX/Flax.

Importing tokax does no I/O and starts no device; submodules are imported on use.

  model, variables = tokax.create_model("vit_base_patch16_224.augreg2_in21k_ft_in1k", pretrained=True,
                                        reduction="tome:16")      # tokax.factory; tokax.list_models()
"""
__version__ = "0.1.0"
_FACTORY = ("create_model", "list_models")


def __getattr__(name: str) -> object:
  """create_model / list_models, imported from tokax.factory (jax, flax) on first use."""
  if name in _FACTORY:
    from tokax import factory
    return getattr(factory, name)
  raise AttributeError(f"module 'tokax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted([n for n in globals() if not n.startswith("_")] + list(_FACTORY) + ["__version__"])
