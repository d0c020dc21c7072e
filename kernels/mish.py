"""Pallas kernels for Mish: an elementwise forward, a backward, and their `custom_vjp`.

The kernels view any input as a `(rows, 128)` array and tile it in `(block_rows, 128)` blocks
over a 1-D grid. A ragged last block is left to the backend, which masks it: Mosaic GPU's TMA
copies zero-fill out-of-bounds loads and drop out-of-bounds stores, Triton masks its loads and
stores, and interpret mode pads and slices. Only a size that is not a multiple of 128 is padded,
by fewer than 128 elements.

The math mirrors `mish_jax._src.activations` (one exp per element, no overflow, exact limits), with
the backend's own exp where the XLA version builds one for speed on CPU, so the kernels agree
with it to the last ulp or two; it is computed in float32 for float16, bfloat16 and float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.typing import ArrayLike

BACKENDS: tuple[str, ...] = ("mosaic_gpu", "triton")
SUPPORTED_DTYPES: tuple[jnp.dtype, ...] = tuple(
  map(jnp.dtype, (jnp.float32, jnp.bfloat16, jnp.float16))
)

# The minor dimension of every block: one float32 per lane of a 128-thread warpgroup.
LANES = 128
# 32 x 128 elements: 16 KiB of float32 in and 16 KiB out of shared memory per block, so several
# blocks share an SM and hide each other's memory latency; 32 values per thread stay in registers.
DEFAULT_BLOCK_SIZE = 4096
# 128 x 128: TMA copies at most 256 rows, and two float32 inputs and an output (the backward)
# then take 192 KiB of the 227 KiB of shared memory of an H100 SM.
MAX_MOSAIC_BLOCK_SIZE = 16384

# Past _HIGH, tanh(softplus(x)) rounds to 1 in float32 and mish(x) = x, mish'(x) = 1. Below _LOW,
# e^x is 0; clipping there keeps x * e^x finite (0) at x = -inf.
_HIGH = 20.0
_LOW = -150.0


def check_backend(backend: str) -> None:
  """Raises ValueError unless `backend` is one of `BACKENDS`."""
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


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


def mish_grad_f32(x: Array) -> Array:
  """mish'(x) = n / (n + 2) + 4 x e^x (1 + e^x) / (n + 2)^2 of a float32 array.

  One division, over (n + 2)^2, which the clip keeps below e^80, finite in float32. Gives 1 at
  +inf, 0 at -inf and NaN for NaN.
  """
  x_c, t, n = _tanh_softplus_parts(x)
  d = n + 2.0
  slope = (n * d + 4.0 * x_c * (t * (1.0 + t))) / (d * d)
  return jnp.where(x > _HIGH, 1.0, slope)


# 1. Kernels.


def _mish_fwd_kernel(x_ref, y_ref):
  y_ref[...] = mish_f32(x_ref[...].astype(jnp.float32)).astype(y_ref.dtype)


def _mish_derivative_kernel(x_ref, dy_dx_ref):
  dy_dx_ref[...] = mish_grad_f32(x_ref[...].astype(jnp.float32)).astype(dy_dx_ref.dtype)


def _mish_bwd_kernel(x_ref, g_ref, dx_ref):
  x = x_ref[...].astype(jnp.float32)
  g = g_ref[...].astype(jnp.float32)
  dx_ref[...] = (g * mish_grad_f32(x)).astype(dx_ref.dtype)


# 2. The `pallas_call` wrapper.


def compiler_params(backend: str, **kwargs) -> pl.CompilerParams:
  """The compiler parameters that make `pallas_call` lower on `backend` when compiled on a GPU.

  Their type picks the lowering: `plgpu.CompilerParams` for Mosaic GPU (the default since JAX
  0.9), `pltriton.CompilerParams` for Triton. Interpret mode ignores them.

  Args:
    backend: `"mosaic_gpu"` or `"triton"`.
    **kwargs: fields of that backend's `CompilerParams`.

  Returns:
    A `CompilerParams` instance for `backend`.
  """
  check_backend(backend)
  if backend == "triton":
    # Imported only on request: the Triton backend is deprecated and warns from JAX 0.11 on.
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(**kwargs)
  return plgpu.CompilerParams(**kwargs)


def _elementwise(
  kernel: Callable[..., None],
  *arrays: Array,
  out_dtype: jnp.dtype,
  block_size: int,
  interpret: bool,
  backend: str,
  name: str,
) -> Array:
  """Runs an elementwise kernel over arrays of one shape, tiled as `(rows, LANES)` blocks.

  Under `jax.vmap` it still runs as one flat kernel: Mosaic GPU cannot lower a batched
  `pallas_call`, and an elementwise kernel does not need one, so the vmap rule broadcasts
  unbatched operands and calls the kernel on the whole batch.
  """

  def call(*operands: Array) -> Array:
    shape = operands[0].shape
    size = operands[0].size
    if size == 0:
      return jnp.zeros(shape, out_dtype)
    padded_size = pl.cdiv(size, LANES) * LANES
    rows = padded_size // LANES
    # Padding with zeros is harmless (mish(0) = 0) and sliced off; only sizes that are not a
    # multiple of LANES pay for it.
    operands_2d = [
      jnp.pad(a.reshape(-1), (0, padded_size - size)).reshape(rows, LANES) for a in operands
    ]
    block_rows = min(block_size // LANES, pl.next_power_of_2(rows))
    spec = pl.BlockSpec((block_rows, LANES), lambda i: (i, 0))
    out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((rows, LANES), out_dtype),
      grid=(pl.cdiv(rows, block_rows),),
      in_specs=[spec] * len(operands_2d),
      out_specs=spec,
      interpret=interpret,
      compiler_params=compiler_params(backend),
      name=name,
    )(*operands_2d)
    return out.reshape(-1)[:size].reshape(shape)

  @jax.custom_batching.custom_vmap
  def elementwise(*operands):
    return call(*operands)

  @elementwise.def_vmap
  def _vmap_rule(axis_size, in_batched, *operands):
    operands = [
      a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
      for a, batched in zip(operands, in_batched, strict=True)
    ]
    return elementwise(*operands), True

  return elementwise(*arrays)


# 3. Forward and backward.


def mish_forward(
  x: Array,
  *,
  block_size: int = DEFAULT_BLOCK_SIZE,
  interpret: bool = False,
  backend: str = "mosaic_gpu",
) -> Array:
  """mish(x) by the forward kernel, in `x.dtype`; no validation, no `custom_vjp`."""
  return _elementwise(
    _mish_fwd_kernel,
    x,
    out_dtype=x.dtype,
    block_size=block_size,
    interpret=interpret,
    backend=backend,
    name="mish_fwd",
  )


def mish_backward(
  x: Array,
  g: Array,
  *,
  block_size: int = DEFAULT_BLOCK_SIZE,
  interpret: bool = False,
  backend: str = "mosaic_gpu",
) -> Array:
  """g * mish'(x) by the backward kernel, in `x.dtype`: one fused pass over `x` and `g`."""
  return _elementwise(
    _mish_bwd_kernel,
    x,
    g.astype(x.dtype),
    out_dtype=x.dtype,
    block_size=block_size,
    interpret=interpret,
    backend=backend,
    name="mish_bwd",
  )


def mish_derivative(
  x: Array,
  *,
  block_size: int = DEFAULT_BLOCK_SIZE,
  interpret: bool = False,
  backend: str = "mosaic_gpu",
) -> Array:
  """mish'(x) by the derivative kernel, in `x.dtype`: the slope for forward-mode rules."""
  return _elementwise(
    _mish_derivative_kernel,
    x,
    out_dtype=x.dtype,
    block_size=block_size,
    interpret=interpret,
    backend=backend,
    name="mish_derivative",
  )


def _mish_vjp_fwd(x: Array, block_size: int, interpret: bool, backend: str) -> tuple[Array, Array]:
  y = mish_forward(x, block_size=block_size, interpret=interpret, backend=backend)
  return y, x  # x is the only residual: the backward recomputes e^x, cheaper than storing it.


def _mish_vjp_bwd(
  block_size: int, interpret: bool, backend: str, x: Array, g: Array
) -> tuple[Array]:
  return (mish_backward(x, g, block_size=block_size, interpret=interpret, backend=backend),)


# 4. The `custom_vjp` public function.


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _mish(x: Array, block_size: int, interpret: bool, backend: str) -> Array:
  return mish_forward(x, block_size=block_size, interpret=interpret, backend=backend)


_mish.defvjp(_mish_vjp_fwd, _mish_vjp_bwd)


@functools.partial(jax.jit, static_argnames=("block_size", "interpret", "backend"))
def mish(
  x: ArrayLike,
  *,
  block_size: int = DEFAULT_BLOCK_SIZE,
  interpret: bool = False,
  backend: str = "mosaic_gpu",
) -> Array:
  r"""Mish, :math:`x \tanh(\mathrm{softplus}(x))`, by Pallas kernels, differentiable once.

  Any shape; float32, bfloat16 and float16, computed in float32 and returned in the input dtype.
  Reverse-mode differentiation runs a second kernel that computes g * mish'(x) from the saved x.
  Works under `jax.jit`, `jax.vmap` and `jax.grad`; forward-mode (`jax.jvp`) is not defined.

  Args:
    x: input array.
    block_size: elements per kernel block, a power of two, at least 128 and, compiled on Mosaic
      GPU, at most `MAX_MOSAIC_BLOCK_SIZE`. Interpret mode runs faster with big blocks.
    interpret: run the kernels in Pallas interpret mode (on CPU, for tests).
    backend: the GPU lowering, `"mosaic_gpu"` (JAX's default) or `"triton"`.

  Returns:
    mish(x), of the shape and dtype of `x`.

  Raises:
    TypeError: if `x` is not float32, bfloat16 or float16.
    ValueError: for a bad `block_size` or `backend`.
  """
  x = jnp.asarray(x)
  check_dtype(x.dtype, "x")
  check_backend(backend)
  if block_size < LANES or block_size & (block_size - 1):
    raise ValueError(f"block_size must be a power of two >= {LANES}, got {block_size}")
  if backend == "mosaic_gpu" and not interpret and block_size > MAX_MOSAIC_BLOCK_SIZE:
    raise ValueError(
      f"block_size must be at most {MAX_MOSAIC_BLOCK_SIZE} on Mosaic GPU, got {block_size}"
    )
  return _mish(x, block_size, interpret, backend)


# 5. The plain-jnp reference.


def mish_reference(x: ArrayLike) -> Array:
  """Mish as `x * tanh(softplus(x))` in float32, returned in the dtype of `x`."""
  x = jnp.asarray(x)
  x32 = x.astype(jnp.float32)
  return (x32 * jnp.tanh(jax.nn.softplus(x32))).astype(x.dtype)
