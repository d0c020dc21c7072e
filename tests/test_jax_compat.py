"""Tests of `mish_jax.kernels.jax_compat`, the one module that imports private JAX names.

On a JAX without the Mosaic GPU interpret-mode names (simulated by pointing the compat module at
modules that do not exist, or by raising the version it asks for), `implementation="pallas"` must
raise one `PallasUnavailableError` naming the JAX it needs, while `import mish_jax` and the XLA
path keep working; without `_convert_element_type` (simulated by deleting it from JAX in a fresh
interpreter), weak types must still come out right.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mish_jax.kernels import jax_compat

import mish_jax

_ROOT = Path(__file__).resolve().parents[1]
_MOVED = "jax._src.pallas.no_such_module"


def _mish64(x: np.ndarray) -> np.ndarray:
  return x * np.tanh(np.logaddexp(0.0, x))


@pytest.fixture
def pallas_names_moved(monkeypatch):
  """A JAX whose interpret-mode modules moved; the kernel modules are imported afresh."""
  monkeypatch.setattr(
    jax_compat,
    "_PALLAS_NAMES",
    {name: (_MOVED, attribute) for name, (_, attribute) in jax_compat._PALLAS_NAMES.items()},
  )
  # Each kernel module is looked up in sys.modules and as its parent's attribute: drop both, so
  # that `implementation="pallas"` imports them again, through the patched compat module.
  for name in [
    n for n in sys.modules if n.startswith("mish_jax.kernels.") or n == "mish_jax._src.pallas"
  ]:
    if name == jax_compat.__name__:
      continue
    parent, _, child = name.rpartition(".")
    monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(sys.modules[parent], child, raising=False)


def test_interpret_names_are_found_on_this_jax():
  params = jax_compat.InterpretGPUParams(detect_races=True, uninitialized_memory="nan")
  assert params.detect_races and params.uninitialized_memory == "nan"
  assert callable(jax_compat.interpret_pallas_call.reset_gpu_interpret_mode_state)
  assert callable(jax_compat.interpret_pallas_call.get_races)
  assert hasattr(jax_compat.gpu_callbacks, "get_races")


def test_other_names_are_attribute_errors():
  with pytest.raises(AttributeError, match="no_such_name"):
    jax_compat.no_such_name  # noqa: B018


def test_moved_module_raises_naming_the_jax_needed(pallas_names_moved):
  with pytest.raises(jax_compat.PallasUnavailableError) as info:
    jax_compat.InterpretGPUParams  # noqa: B018
  message = str(info.value)
  assert f"jax>={jax_compat.PALLAS_MIN_JAX}" in message
  assert f"jax {jax.__version__} has no {_MOVED}.InterpretGPUParams" in message
  assert "implementation='xla'" in message
  assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_older_jax_raises_naming_the_jax_needed(monkeypatch):
  monkeypatch.setattr(jax_compat, "PALLAS_MIN_JAX", "99.1.0")
  with pytest.raises(jax_compat.PallasUnavailableError, match=r"needs jax>=99\.1\.0") as info:
    jax_compat.gpu_callbacks  # noqa: B018
  assert f"jax {jax.__version__} is installed" in str(info.value)


def test_minimum_is_not_above_the_installed_jax():
  # The suite passes on the installed JAX, so the Pallas path must not refuse it.
  assert jax.__version_info__[:3] >= jax_compat._version_info(jax_compat.PALLAS_MIN_JAX)


@pytest.mark.parametrize("op", ["mish", "linear_mish"])
def test_pallas_path_raises_the_one_error(pallas_names_moved, op):
  x = jnp.linspace(-3.0, 3.0, 8, dtype=jnp.float32)
  args = (x.reshape(2, 4), jnp.ones((4, 3)), jnp.zeros(3)) if op == "linear_mish" else (x,)
  with pytest.raises(jax_compat.PallasUnavailableError, match=jax_compat.PALLAS_MIN_JAX):
    getattr(mish_jax, op)(*args, implementation="pallas")
  # The same error again, not a half-imported module's.
  with pytest.raises(jax_compat.PallasUnavailableError):
    getattr(mish_jax, op)(*args, implementation="pallas")


def test_xla_path_works_without_the_pallas_names(pallas_names_moved):
  rng = np.random.default_rng(0)
  x = rng.normal(0.0, 4.0, size=(5, 7)).astype(np.float32)
  np.testing.assert_allclose(mish_jax.mish(x, implementation="xla"), _mish64(x), rtol=2e-6)
  np.testing.assert_allclose(mish_jax.mish(x), _mish64(x), rtol=2e-6)
  h = 1e-3
  x64 = x.astype(np.float64)
  central = (_mish64(x64 + h) - _mish64(x64 - h)) / (2 * h)
  grad = jax.grad(lambda v: mish_jax.mish(v).sum())(x)
  np.testing.assert_allclose(grad, central, rtol=1e-4, atol=1e-5)
  kernel = rng.normal(size=(7, 3)).astype(np.float32)
  bias = rng.normal(size=3).astype(np.float32)
  expected = _mish64(x.astype(np.float64) @ kernel + bias)
  np.testing.assert_allclose(mish_jax.linear_mish(x, kernel, bias), expected, rtol=1e-4, atol=1e-5)
  assert mish_jax.mish(1.0).weak_type


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("weak_type", [True, False])
def test_primitive_fallback_matches_the_private_function(dtype, weak_type):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5)), dtype)
  convert = jax_compat._convert_element_type_by_primitive
  private = jax_compat._convert_element_type
  dtype = jnp.dtype(dtype)  # As `jax_compat.convert_element_type` gives it.
  for f in (lambda v: v, jax.jit, jax.vmap):
    got = f(lambda v: convert(v, dtype, weak_type=weak_type))(x)
    want = f(lambda v: private(v, dtype, weak_type=weak_type))(x)
    assert (
      (got.dtype, got.weak_type) == (want.dtype, want.weak_type) == (jnp.dtype(dtype), weak_type)
    )
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(x, np.float32))
  cotangent = jax.grad(lambda v: convert(v, dtype, weak_type=weak_type).astype(jnp.float32).sum())
  np.testing.assert_array_equal(cotangent(x.astype(jnp.float32)), np.ones((3, 5), np.float32))


def test_import_and_xla_path_without_any_private_name():
  """A fresh interpreter on a JAX that has neither `_convert_element_type` nor the Pallas names."""
  script = textwrap.dedent(
    f"""
    import json
    import jax._src.lax.lax as lax_internal
    private = lax_internal._convert_element_type
    del lax_internal._convert_element_type
    from mish_jax.kernels import jax_compat
    lax_internal._convert_element_type = private  # Hidden from the compat module only.
    assert jax_compat._convert_element_type is None
    names = jax_compat._PALLAS_NAMES
    jax_compat._PALLAS_NAMES = {{k: ({_MOVED!r}, a) for k, (_, a) in names.items()}}
    import jax
    import jax.numpy as jnp
    import mish_jax
    y = mish_jax.mish(1.0)
    g = jax.grad(mish_jax.mish)(1.0)
    out = dict(y=float(y), y_weak=y.weak_type, g=float(g), g_weak=g.weak_type,
               f16_weak=mish_jax.mish(jnp.float16(1.0)).weak_type)
    try:
      mish_jax.mish(jnp.ones(4), implementation="pallas")
    except jax_compat.PallasUnavailableError as e:
      out["error"] = str(e)
    print(json.dumps(out))
    """
  )
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run(
    [sys.executable, "-c", script], cwd=_ROOT, env=env, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.splitlines()[-1])
  assert out["y"] == pytest.approx(float(_mish64(np.float64(1.0))), rel=1e-6)
  assert out["y_weak"] and out["g_weak"] and not out["f16_weak"]
  h = 1e-5
  assert out["g"] == pytest.approx(float((_mish64(1.0 + h) - _mish64(1.0 - h)) / (2 * h)), rel=1e-5)
  assert f"jax>={jax_compat.PALLAS_MIN_JAX}" in out["error"]


def test_lowest_pins_are_pyprojects_lower_bounds():
  """`.ci/lowest-jax.txt` pins exactly the lower bounds that pyproject.toml and the compat module
  state, so CI's lowest leg tests what the package claims to support."""
  pins = dict(re.findall(r"^([\w-]+)==(\S+)$", (_ROOT / ".ci/lowest-jax.txt").read_text(), re.M))
  pyproject = (_ROOT / "pyproject.toml").read_text()
  (dependencies,) = re.findall(r"^dependencies = \[(.*?)^\]", pyproject, re.M | re.S)
  bounds = dict(re.findall(r'"([\w-]+)>=([^"]+)"', dependencies))
  assert pins == bounds
  assert pins["jax"] == pins["jaxlib"] == jax_compat.PALLAS_MIN_JAX
