"""What both kernel modules share: dtypes, the `interpret=` switch, the Mish math, and mesh typing.

The math mirrors `mish_jax._src.activations` (one exp per element, no overflow, exact limits) with
the backend's own exp, in float32. This package imports only JAX.
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax

from . import rounding
from .jax_compat import InterpretGPUParams

# `interpret=`: compiled (False), Mosaic GPU's interpret mode (True), or with these parameters.
Interpret = bool | InterpretGPUParams
SUPPORTED_DTYPES: tuple[jnp.dtype, ...] = tuple(
  map(jnp.dtype, (jnp.float32, jnp.bfloat16, jnp.float16))
)


# Past _HIGH, tanh(softplus(x)) rounds to 1 in float32 and mish(x) = x, mish'(x) = 1. Below _LOW,
# e^x is 0; clipping there keeps x * e^x finite (0) at x = -inf.
_HIGH = rounding.HIGH
_LOW = -150.0


def check_dtype(dtype: jnp.dtype, name: str) -> None:
  """Raises TypeError unless the kernels support `dtype`."""
  if jnp.dtype(dtype) not in SUPPORTED_DTYPES:
    raise TypeError(
      f"{name} must be float32, bfloat16 or float16 for the Pallas kernels, got {dtype}"
      + (" (use the XLA implementation for float64)" if dtype == jnp.float64 else "")
    )


def _tanh_softplus_parts(x: Array) -> tuple[Array, Array, Array]:
  """Returns `(x_c, t, n)`: x clipped, t = e^x_c and n = t (t + 2).

  tanh(softplus(x)) = tanh(log(1 + t)) = ((1 + t)^2 - 1) / ((1 + t)^2 + 1) = n / (n + 2): one exp
  per element.
  """
  x_c = jnp.maximum(jnp.minimum(x, _HIGH), _LOW)
  t = jnp.exp(x_c)
  return x_c, t, t * (t + 2.0)


def mish_f32(x: Array) -> Array:
  """Mish of a float32 array, in plain jnp ops that lower on every Pallas backend."""
  x_c, _, n = _tanh_softplus_parts(x)
  return jnp.where(x > _HIGH, x, x_c * (n / (n + 2.0)))


def in_float32(fn: Callable[..., Array]) -> Callable[..., Array]:
  """`fn` (float32 in, float32 out) on operands of a 16-bit dtype: computed in float32, rounded
  once to the first operand's dtype."""

  def rounded(*operands: Array) -> Array:
    return fn(*(a.astype(jnp.float32) for a in operands)).astype(operands[0].dtype)

  return rounded


def mish_rounded(x: Array) -> Array:
  """Mish in the dtype of `x`: float32 as `mish_f32`, bfloat16 and float16 correctly rounded."""
  if x.dtype == jnp.bfloat16:
    return rounding.mish_bfloat16(x)
  if x.dtype == jnp.float16:
    return rounding.mish_float16(x, mish_f32)
  return in_float32(mish_f32)(x)


def mish_grad_f32(x: Array) -> Array:
  """mish'(x) = n / (n + 2) + 4 x e^x (1 + e^x) / (n + 2)^2 of a float32 array.

  One division, over (n + 2)^2, which the clip keeps below e^80, finite in float32. Gives 1 at
  +inf, 0 at -inf and NaN for NaN.
  """
  x_c, t, n = _tanh_softplus_parts(x)
  d = n + 2.0
  slope = (n * d + 4.0 * x_c * (t * (1.0 + t))) / (d * d)
  return jnp.where(x > _HIGH, 1.0, slope)


def index_rem(index: Array, divisor: int) -> Array:
  """`index % divisor` in the dtype of `index` (lax.rem makes a Python int an int64 under x64)."""
  return lax.rem(index, jnp.asarray(divisor, index.dtype))


def interpret_params(interpret: Interpret) -> InterpretGPUParams | None:
  """`True` is GPU interpret mode with default parameters; `False` compiles."""
  if isinstance(interpret, InterpretGPUParams):
    return interpret
  return InterpretGPUParams() if interpret else None


@functools.cache
def _host_thread() -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mish_jax_interpreter")


def effect_free(kernel: Callable[..., Any], out_type: Any, interpreted: bool) -> Callable[..., Any]:
  """`kernel` as the traced program calls it: directly when compiled, through a pure callback when
  interpreted.

  Mosaic GPU's interpreter runs on ordered IO callbacks, effects that `custom_jvp` under
  `jax_enable_checks` and `jax.checkpoint`'s partial evaluation refuse. An interpreted kernel's
  result depends on its operands alone, so one pure callback, which runs it on the host in a jit
  of its own, carries none of them. `out_type` is the kernel's, without mesh axes (the caller's
  `vary` marks the outputs), as the host runs it.
  """
  if not interpreted:
    return kernel
  run = jax.jit(kernel)

  def host_call(*operands: Array) -> Any:
    # On a thread of its own, whose tracing state is clean: an eager `shard_map` runs this inside
    # its mesh axes, which the interpreter would otherwise index.
    outputs = _host_thread().submit(run, *operands).result()
    return jax.tree.map(np.asarray, outputs)

  return functools.partial(jax.pure_callback, host_call, out_type, vmap_method="sequential")


def varying_axes(*operands: Array) -> frozenset[str]:
  """The manual mesh axes (of an enclosing `shard_map`) that any of `operands` varies over."""
  return frozenset().union(*(jax.typeof(a).manual_axis_type.varying for a in operands))


def vary(array: Array, axes: frozenset[str]) -> Array:
  """`array`, typed as varying over `axes` too: what `shard_map(check_vma=True)` checks.

  `plgpu.kernel` (JAX 0.10, 0.11) traces under `check_vma=False`, so its outputs come out
  invariant whatever their `out_type` says; a kernel's output varies as its inputs do.
  """
  missing = axes - jax.typeof(array).manual_axis_type.varying
  return lax.pcast(array, tuple(sorted(missing)), to="varying") if missing else array


def out_struct(shape: tuple[int, ...], dtype: jnp.dtype, axes: frozenset[str]):
  """A kernel's `out_type`, varying over the manual mesh `axes`."""
  manual_axis_type = jax.sharding.ManualAxisType(varying=axes)
  return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=manual_axis_type)


def check_interpretable(name: str) -> None:
  """Raises NotImplementedError under a `shard_map` over several devices.

  There each device's interpreted kernel waits for the others' inside Mosaic GPU's interpreter
  (it hangs, or asserts "Barrier remains allocated", in JAX 0.10); compiled kernels run there.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if any(mesh.shape[axis] > 1 for axis in mesh.manual_axes):
    raise NotImplementedError(
      f"{name}: Mosaic GPU's interpret mode does not run under shard_map over several devices;"
      ' use implementation="xla" there'
    )
