"""Every ```python block of README.md, run verbatim in a fresh namespace from a directory outside the repository.

Blocks stay small enough for the CPU suite (jitted forwards on a few images): each raises nothing, or the test fails.
"""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[str]:
  """The code of every ```python fenced block of a markdown text, in order."""
  return [m[1] for m in _BLOCK.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_extractor_finds_the_blocks():
  assert python_blocks("a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n") == ["x = 1\n", "y = 2\n"]
  assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_block_runs(index, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  exec(compile(BLOCKS[index], f"README.md block {index + 1}", "exec"), {"__name__": "__readme__"})
