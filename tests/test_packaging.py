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
