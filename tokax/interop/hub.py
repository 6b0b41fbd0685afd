"""Files from the Hugging Face hub through huggingface_hub (optional: `pip install 'tokax[hub]'`).

  hub_file("timm/vit_base_patch16_224.augreg2_in21k_ft_in1k") -> path of its model.safetensors

Online, hf_hub_download fetches the file into the hub cache (or finds it there); offline
(HF_HUB_OFFLINE=1, read at each call) only the cache is read. The cache is `cache_dir`, else
HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default (~/.cache/huggingface/hub): the
environment is read at each call, not when huggingface_hub was imported.
"""
from __future__ import annotations

import os
from typing import Any


def _env_true(name: str) -> bool:
  return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _import_hub() -> Any:
  try:
    import huggingface_hub
  except ImportError as err:
    raise ImportError("downloading weights from the Hugging Face hub needs huggingface_hub, an optional "
                      "dependency of tokax: pip install 'tokax[hub]' (or pip install huggingface_hub)") from err
  return huggingface_hub


def resolve_cache_dir(given: str | os.PathLike | None = None) -> str:
  """The hub cache a call uses: `given`, else $HF_HUB_CACHE, else $HF_HOME/hub, else huggingface_hub's default."""
  if given is not None:
    path = os.fspath(given)
  elif os.environ.get("HF_HUB_CACHE"):
    path = os.environ["HF_HUB_CACHE"]
  elif os.environ.get("HF_HOME"):
    path = os.path.join(os.environ["HF_HOME"], "hub")
  else:
    path = _import_hub().constants.HF_HUB_CACHE
  return os.path.abspath(os.path.expandvars(os.path.expanduser(path)))


def is_offline() -> bool:
  """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set now, or when huggingface_hub was imported."""
  if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
    return True
  return bool(_import_hub().constants.HF_HUB_OFFLINE)


def _not_cached(repo_id: str, filename: str, cache: str, why: str) -> ValueError:
  folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
  return ValueError(
      f"{repo_id}/{filename}: {why}, and it is not in the Hugging Face cache {cache} (looked for "
      f"{folder}/snapshots/<commit>/{filename} through {folder}/refs/main). Fetch it once where the hub is "
      f"reachable: hf download {repo_id} {filename} --cache-dir {cache} (or copy that cache folder here); "
      "or pass cache_dir= (HF_HUB_CACHE=) the cache that holds it")


def hub_file(repo_id: str, filename: str = "model.safetensors", *, cache_dir: str | os.PathLike | None = None) -> str:
  """The local path of `filename` in hub model repository `repo_id`, downloaded if online and not cached.

  Raises:
    ImportError: huggingface_hub is not installed.
    ValueError: offline (or the hub unreachable) and the file is not in the cache (the message says
      where it looked and the command that fetches it); or the hub has no such repository or file.
  """
  hub = _import_hub()
  cache = resolve_cache_dir(cache_dir)
  if is_offline():
    path = hub.try_to_load_from_cache(repo_id, filename, cache_dir=cache)
    if isinstance(path, str) and os.path.isfile(path):
      return path
    raise _not_cached(repo_id, filename, cache, "offline (HF_HUB_OFFLINE=1)")
  from huggingface_hub import errors
  try:
    return hub.hf_hub_download(repo_id, filename, cache_dir=cache)
  except errors.LocalEntryNotFoundError:  # the hub did not answer and the cache has no copy
    raise _not_cached(repo_id, filename, cache, "the Hugging Face hub could not be reached") from None
  except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.EntryNotFoundError) as err:
    raise ValueError(f"{repo_id}/{filename}: the Hugging Face hub has no such file ({type(err).__name__}); "
                     f"check the name at https://huggingface.co/{repo_id}") from None
