"""Every private JAX name this project uses, in one module: found, or refused with one clear error.

JAX promises nothing about `jax._src`, so each private name is looked up here alone:

* `convert_element_type`, which `import mish_jax` needs (no public API sets an array's weak type),
  is never refused: without the private function it binds the public `lax.convert_element_type_p`
  primitive, as that function does.
* The Mosaic GPU interpret-mode names, which only the Pallas path and its tests use, are looked up
  on first use (a module `__getattr__`). On a JAX older than `PALLAS_MIN_JAX`, or one where they
  moved, that use raises `PallasUnavailableError` naming the JAX the kernels need; the XLA path is
  untouched.

This module imports only JAX, and no Pallas until a Pallas name is asked for, so `mish_jax._src`
may import it eagerly.
"""

from __future__ import annotations

import importlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

try:
  from jax._src.lax.lax import _convert_element_type
except ImportError:  # A JAX that moved it: `convert_element_type` binds the primitive instead.
  _convert_element_type = None

# The oldest JAX on which the whole test suite passes, the Pallas path included: 0.10.0 and 0.10.1
# have no `plgpu.kernel(out_type=...)`, and their interpret mode rejects the kernels' pipelines.
PALLAS_MIN_JAX = "0.10.2"

# The interpret-mode names: where each lives (a module, or an attribute of one when not None).
_PALLAS_NAMES: dict[str, tuple[str, str | None]] = {
  "InterpretGPUParams": ("jax._src.pallas.mosaic_gpu.interpret.params", "InterpretGPUParams"),
  "interpret_pallas_call": ("jax._src.pallas.mosaic_gpu.interpret.interpret_pallas_call", None),
  "gpu_callbacks": ("jax._src.pallas.mosaic_gpu.interpret.gpu_callbacks", None),
  # For the tests: a device a deviceless compile targets, and JAX's own test case and config.
  "AbstractDevice": ("jax._src.mesh", "AbstractDevice"),
  "test_util": ("jax._src.test_util", None),
}


class PallasUnavailableError(ImportError):
  """The installed JAX lacks what the Pallas kernels use; `implementation="xla"` still works."""


def convert_element_type(
  operand: ArrayLike, new_dtype: jnp.dtype, *, weak_type: bool = False
) -> Array:
  """`operand` as `new_dtype`, weakly typed if `weak_type`; differentiable."""
  new_dtype = jnp.dtype(new_dtype)
  if _convert_element_type is not None:
    return _convert_element_type(operand, new_dtype, weak_type=weak_type)
  return _convert_element_type_by_primitive(operand, new_dtype, weak_type=weak_type)


def _convert_element_type_by_primitive(
  operand: ArrayLike, new_dtype: np.dtype, *, weak_type: bool
) -> Array:
  """The fallback: the public primitive, with the parameters it has had since jax 0.6."""
  return lax.convert_element_type_p.bind(
    jnp.asarray(operand), new_dtype=new_dtype, weak_type=bool(weak_type), sharding=None
  )


def _version_info(version: str) -> tuple[int, ...]:
  return tuple(int(part) for part in version.split(".")[:3])


def _unavailable(reason: str) -> PallasUnavailableError:
  return PallasUnavailableError(
    f"implementation='pallas' needs jax>={PALLAS_MIN_JAX} (and the matching jaxlib): {reason}. "
    f"Install a JAX the kernels support (jax>={PALLAS_MIN_JAX}), or use implementation='xla', "
    "which works on this JAX"
  )


def __getattr__(name: str) -> Any:
  """A Mosaic GPU interpret-mode name, looked up now; `PallasUnavailableError` if it is missing."""
  if name not in _PALLAS_NAMES:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  if jax.__version_info__[:3] < _version_info(PALLAS_MIN_JAX):
    raise _unavailable(f"jax {jax.__version__} is installed")
  module_name, attribute = _PALLAS_NAMES[name]
  where = module_name if attribute is None else f"{module_name}.{attribute}"
  try:
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)
  except (ImportError, AttributeError) as e:
    raise _unavailable(
      f"jax {jax.__version__} has no {where}, a private name the kernels use (JAX moved it)"
    ) from e
