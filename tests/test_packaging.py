"""The wheel ships what users need: the package, its kernels, py.typed and the license."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contents(tmp_path):
  subprocess.run(
    [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
     "-w", str(tmp_path), str(REPO_ROOT)],
    check=True, capture_output=True,
  )  # fmt: skip
  (wheel,) = tmp_path.glob("mish_jax-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert "mish_jax/py.typed" in names
  assert any(".dist-info/" in name and name.endswith("/LICENSE") for name in names)
  for module in ("__init__", "common", "mish", "linear_mish"):
    assert f"mish_jax/kernels/{module}.py" in names
  assert not any(name.startswith(("tests/", "experiments/", "benchmarks/")) for name in names)


def _package_imports(path: Path) -> set[str]:
  """The `mish_jax._src` modules a module imports, lazily or not."""
  import ast

  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module == "mish_jax._src":
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mish_jax._src."):
      found.add(node.module.rsplit(".", 1)[1])
  return found


def test_no_import_cycle_in_the_library():
  """Imports point one way, function-level (lazy) ones included."""
  source = Path(__file__).parents[1] / "mish_jax" / "_src"
  graph = {path.stem: _package_imports(path) for path in source.glob("*.py")}
  assert graph["pallas"] and "activations" not in graph["pallas"]

  def visit(module, path):
    assert module not in path, " -> ".join([*path, module])
    for imported in graph.get(module, ()):
      visit(imported, [*path, module])

  for module in graph:
    visit(module, [])
