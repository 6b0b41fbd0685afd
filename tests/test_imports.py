"""tokax's import graph: no cycles, and DESIGN.md's layering (which folders may import which).

The graph is read from the source with ast, not by importing: every `import tokax.x` and
`from tokax.x import y` counts, at module level and inside functions alike (a lazy import is still
a dependency). `from tokax.a import b` is an edge to the module tokax.a.b when that is a module,
else to tokax.a; relative imports are resolved the same way.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "tokax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, modules: set[str]) -> set[str]:
  """The tokax modules `name` imports anywhere in its source."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
      else:
        target = node.module or ""
      for alias in node.names:
        child = f"{target}.{alias.name}"
        found.add(child if child in modules else target)
  return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as [a, b, ..., a], or None."""
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    path.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_the_graph_sees_module_and_function_level_imports():
  graph = import_graph()
  assert "tokax.train.run" in graph["tokax.train.main"]  # module level
  assert "tokax.train.restore" in graph["tokax.bench.compare_runs"]  # inside a function
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_tokax_has_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


# DESIGN.md: reduction/ and kernels/ import only jax, flax and numpy (and each other's helpers);
# models/ never imports train/.
FORBIDDEN = {
    "tokax.reduction": ("tokax.models", "tokax.train", "tokax.bench", "tokax.data"),
    "tokax.kernels": ("tokax.models", "tokax.train", "tokax.bench", "tokax.data", "tokax.reduction"),
    "tokax.models": ("tokax.train",),
    "tokax.tokenizers": ("tokax.train",),
}


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layering(folder):
  bad = [f"{name} imports {dep}" for name, deps in sorted(import_graph().items())
         if name == folder or name.startswith(folder + ".")
         for dep in sorted(deps) if dep.startswith(FORBIDDEN[folder])]
  assert not bad, "\n".join(bad)


def test_kernel_backends_import_helpers_never_the_dispatchers():
  graph = import_graph()
  dispatchers = {"tokax.kernels.attention", "tokax.kernels.matching", "tokax.kernels"}
  backends = [name for name in graph if name.startswith(("tokax.kernels.mosaic_gpu", "tokax.kernels.tpu"))]
  assert backends
  bad = [f"{name} imports {dep}" for name in backends for dep in sorted(graph[name] & dispatchers)]
  assert not bad, "\n".join(bad)
