"""Every notebook runs top to bottom at a small size (TOKAX_NOTEBOOK_SMALL=1), the way a user runs it: a copy
in a temporary directory outside the repository, with tokax found only as the installed package (its configs
too, as tokax:<name>.py), never through the repository on sys.path or a path relative to notebooks/."""
import json
import os
import pathlib
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Run after the notebook's cells: where the kernel ran and what it could import from.
_PROBE = ("import json, os, sys, tokax\n"
          "print('PROBE' + json.dumps({'cwd': os.getcwd(), 'sys_path': sys.path, 'tokax': tokax.__file__}))")


def _code(path):
  return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_installs_tokax_first_and_reads_no_repository_path(path):
  first = _code(path)[0]
  assert "%pip install" in first and "import tokax" in first and "except ImportError" in first, (
      f"{path.name}: the first code cell must install tokax when it is missing (a guarded %pip install)")
  for source in _code(path):
    for marker in ("../", "configs/", "spec_from_file_location"):
      assert marker not in source, f"{path.name} reads a repository path ({marker!r}); use tokax:<name>.py configs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_saved_outputs_come_from_one_complete_run(path):
  """A notebook committed with outputs shows one top-to-bottom run at its full setting: every code cell ran, in
  order, without an error (the notebooks whose full setting wants a GPU are committed without outputs)."""
  cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
  if not any(c.outputs for c in cells):
    return
  assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1))
  assert not [o for c in cells for o in c.outputs if o.output_type == "error"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes(path, tmp_path, monkeypatch):
  monkeypatch.setenv("TOKAX_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  # Only the installed package: no PYTHONPATH entry may lead to the repository.
  kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
          if p and not pathlib.Path(p).resolve().is_relative_to(ROOT)]
  if kept:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(kept))
  else:
    monkeypatch.delenv("PYTHONPATH", raising=False)
  workdir = tmp_path / "outside_the_repo"
  workdir.mkdir()
  copy = workdir / path.name
  shutil.copy(path, copy)
  nb = nbformat.read(copy, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == "code":
      cell.outputs = []
  nb.cells.append(nbformat.v4.new_code_cell(_PROBE))
  NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "speed-up" in outputs or path.name != "quickstart.ipynb"
  probe = json.loads(outputs.rpartition("PROBE")[2].splitlines()[0])
  assert pathlib.Path(probe["cwd"]).resolve() == workdir.resolve()
  on_path = {pathlib.Path(p or probe["cwd"]).resolve() for p in probe["sys_path"]}
  assert ROOT not in on_path and ROOT / "notebooks" not in on_path, probe["sys_path"]
  # An editable install maps tokax to the checkout's tokax/ folder; a wheel to site-packages: either is the package.
  assert pathlib.Path(probe["tokax"]).resolve().parent.name == "tokax"
