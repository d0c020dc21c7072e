"""The Pallas path's differentiable functions: the kernels under `custom_jvp` rules.

The kernels compute values only: mish(x), mish'(x), and the fused mish(x @ w + b) with its
pre-activation z. The rules around them are linear in the tangent (a kernel's mish' times it), so
JAX transposes them for reverse mode; mish'' and every order above come from the XLA path's
formulas in `derivatives`. Forward mode, reverse mode, `jax.hessian`, `vmap`, x64 mode,
`jax.checkpoint`, `jax_enable_checks` and `shard_map` (with or without `check_vma`) then work as on
the XLA path, compiled or interpreted. In interpret mode a `shard_map` over several devices raises
NotImplementedError naming the XLA implementation (Mosaic GPU's interpreter cannot run there);
over one device it runs.

Imported only when the Pallas implementation is asked for: the kernels import Pallas.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import Array
from jax.custom_derivatives import SymbolicZero

from mish_jax._src import derivatives
from mish_jax.kernels import linear_mish as linear_mish_kernels
from mish_jax.kernels import mish as mish_kernels


def mish(x: Array, *, interpret: bool) -> Array:
  """mish(x) by the Pallas kernel, differentiable to any order.

  Reverse mode saves only `x`, as on the XLA path, and recomputes mish'(x) from it, compiled and
  interpreted alike (the kernels run the interpreter behind an effect-free callback).

  Args:
    x: a float32, bfloat16 or float16 array.
    interpret: run the kernels in Pallas interpret mode (on CPU).

  Returns:
    mish(x), of the shape and dtype of `x`.

  Raises:
    TypeError: for other dtypes; the message names the XLA implementation for float64.
  """
  mish_kernels.check_dtype(x.dtype, "x")
  return _mish_rematerialized(x, interpret)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _mish(x: Array, interpret: bool) -> Array:
  return mish_kernels.mish_forward(x, interpret=interpret)


@_mish.defjvp
def _mish_jvp(
  interpret: bool, primals: tuple[Array], tangents: tuple[Array]
) -> tuple[Array, Array]:
  (x,), (x_dot,) = primals, tangents
  return _mish(x, interpret), _times_tangent(_mish_derivative(x, interpret), x_dot, x.dtype)


# As on the XLA path: the backward recomputes mish'(x) from x rather than keeping it.
_mish_rematerialized = jax.checkpoint(_mish, static_argnums=(1,))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _mish_derivative(x: Array, interpret: bool) -> Array:
  return mish_kernels.mish_derivative(x, interpret=interpret)


@_mish_derivative.defjvp
def _mish_derivative_jvp(
  interpret: bool, primals: tuple[Array], tangents: tuple[Array]
) -> tuple[Array, Array]:
  (x,), (x_dot,) = primals, tangents
  second = derivatives.mish_second_derivative(x.astype(jnp.float32))
  return _mish_derivative(x, interpret), _times_tangent(second, x_dot, x.dtype)


def _times_tangent(slope: Array, tangent: Array, dtype: jnp.dtype) -> Array:
  """slope * tangent, computed in float32 and rounded once to `dtype`."""
  return (slope.astype(jnp.float32) * tangent.astype(jnp.float32)).astype(dtype)


def linear_mish(x: Array, kernel: Array, bias: Array | None, *, interpret: bool) -> Array:
  """mish(x @ kernel + bias) by the fused kernel, differentiable to any order in all three.

  Args:
    x: `(..., K)` input, of the dtype of `kernel`, which the matmul runs in: float32, bfloat16 or
      float16.
    kernel: `(K, N)` weight.
    bias: `(N,)` bias, or None; a float32 bias with 16-bit `x` and `kernel` leaves the matmul in
      16 bits.
    interpret: run the kernels in Pallas interpret mode (on CPU).

  Returns:
    The `(..., N)` activations, in `jnp.result_type(x, kernel, bias)`.

  Raises:
    TypeError: for other dtypes; the message names the XLA implementation for float64.
  """
  mish_kernels.check_dtype(x.dtype, "the dtype of x and kernel")
  out_dtype = x.dtype if bias is None else jnp.result_type(x, bias)
  mish_kernels.check_dtype(out_dtype, "the operands' common dtype")
  *batch, k = x.shape
  n = kernel.shape[1]
  # The kernel adds a float32 bias to its float32 accumulator.
  b = jnp.zeros((n,), jnp.float32) if bias is None else bias.astype(jnp.float32)
  y = _linear_mish(x.reshape(math.prod(batch), k), kernel, b, interpret, out_dtype)
  return y.reshape(*batch, n)


# Symbolic zeros: with no tangent for x (a layer's input data), its matmul is not computed.
@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _linear_mish(x: Array, w: Array, b: Array, interpret: bool, out_dtype: jnp.dtype) -> Array:
  return linear_mish_kernels.linear_mish_forward(x, w, b, interpret=interpret, out_dtype=out_dtype)


def _linear_mish_jvp(
  interpret: bool,
  out_dtype: jnp.dtype,
  primals: tuple[Array, Array, Array],
  tangents: tuple[Array, Array, Array],
) -> tuple[Array, Array]:
  (y, _), (y_dot, _) = _linear_mish_and_z_jvp(interpret, out_dtype, primals, tangents)
  return y, y_dot


_linear_mish.defjvp(_linear_mish_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _linear_mish_and_z(
  x: Array, w: Array, b: Array, interpret: bool, out_dtype: jnp.dtype
) -> tuple[Array, Array]:
  """(mish(z), z) for z = x @ w + b, both by the fused kernel."""
  return linear_mish_kernels.linear_mish_forward(
    x, w, b, interpret=interpret, save_z=True, out_dtype=out_dtype
  )


def _linear_mish_and_z_jvp(
  interpret: bool,
  out_dtype: jnp.dtype,
  primals: tuple[Array, Array, Array],
  tangents: tuple[Array, Array, Array],
) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
  x, w, _ = primals
  x_dot, w_dot, b_dot = tangents
  y, z = _linear_mish_and_z(*primals, interpret, out_dtype)
  # z_dot = x_dot @ w + x @ w_dot + b_dot, accumulated in float32 as the kernel does; the rule
  # only runs with at least one tangent, and a zeros array to start from would be a residual.
  terms = []
  if not isinstance(x_dot, SymbolicZero):
    terms.append(jnp.dot(x_dot, w, preferred_element_type=jnp.float32))
  if not isinstance(w_dot, SymbolicZero):
    terms.append(jnp.dot(x, w_dot, preferred_element_type=jnp.float32))
  if not isinstance(b_dot, SymbolicZero):
    terms.append(jnp.broadcast_to(b_dot, z.shape))
  z_dot = functools.reduce(jnp.add, terms)
  y_dot = _times_tangent(_mish_derivative(z, interpret), z_dot, y.dtype)
  return (y, z), (y_dot, z_dot.astype(z.dtype))


_linear_mish_and_z.defjvp(_linear_mish_and_z_jvp, symbolic_zeros=True)
