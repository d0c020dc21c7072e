"""`linear_mish`, mish(x @ kernel + bias), and `MishLinear`, its Flax NNX layer."""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes
from flax.nnx.nn.linear import default_bias_init, default_kernel_init
from flax.typing import Dtype, Initializer
from jax import Array
from jax.typing import ArrayLike

from mish_jax._src.activations import (
  check_arraylike,
  check_real,
  mish,
  promote_like,
  with_weak_type,
)
from mish_jax._src.dispatch import Implementation, resolve_implementation


def _check_operands(x: Array, kernel: Array, bias: Array | None) -> None:
  """Raises a TypeError or ValueError, naming the culprit, for operands a dense layer rejects."""
  check_real("linear_mish", x=x, kernel=kernel, **({} if bias is None else {"bias": bias}))
  if kernel.ndim != 2:
    raise ValueError(f"kernel must have shape (in_features, out_features), got {kernel.shape}")
  if x.ndim < 1:
    raise ValueError("x must have at least one dimension, (..., in_features), got a scalar")
  if x.shape[-1] != kernel.shape[0]:
    raise ValueError(
      f"x's last dimension ({x.shape[-1]}) must equal kernel's in_features "
      f"({kernel.shape[0]}): got x {x.shape} and kernel {kernel.shape}"
    )
  if bias is not None and bias.shape != (kernel.shape[1],):
    raise ValueError(
      f"bias must have shape (out_features,) = ({kernel.shape[1]},), got {bias.shape}"
    )


def linear_mish(
  x: ArrayLike,
  kernel: ArrayLike,
  bias: ArrayLike | None = None,
  *,
  implementation: str | None = None,
) -> Array:
  """A dense layer followed by Mish: `mish(x @ kernel + bias)`.

  Args:
    x: `(..., in_features)` input.
    kernel: `(in_features, out_features)` weight.
    bias: `(out_features,)` bias, or None for none.
    implementation: `None` (the fastest for the backend), `"xla"` (`mish_jax.mish` of XLA's
      matmul) or `"pallas"` (one fused Pallas kernel, float32 accumulation, Mish in the epilogue;
      interpreted on backends where Pallas does not compile, such as CPU; float64 takes the XLA
      path).

  Returns:
    The `(..., out_features)` activations, with the dtype and weak type of
    `jax.nn.mish(x @ kernel + bias)`, as `mish_jax.mish` has (integers are computed in floating
    point, not in an integer matmul). Both implementations are differentiable to any order,
    in forward and reverse mode.

  Raises:
    TypeError: for non-array or complex operands.
    ValueError: for mismatched shapes or an unknown implementation.

  Example:
    >>> import jax.numpy as jnp
    >>> import mish_jax
    >>> mish_jax.linear_mish(jnp.ones((2, 3)), jnp.eye(3), jnp.zeros(3))
    Array([[0.86509836, 0.86509836, 0.86509836],
           [0.86509836, 0.86509836, 0.86509836]], dtype=float32)
  """
  # Resolved before jit traces: inside, a committed array's device is no longer known.
  implementation, interpret = resolve_implementation(implementation, x, kernel, bias)
  return _linear_mish_jit(x, kernel, bias, implementation, interpret)


@functools.partial(jax.jit, static_argnames=("implementation", "interpret"))
def _linear_mish_jit(
  x: ArrayLike,
  kernel: ArrayLike,
  bias: ArrayLike | None,
  implementation: Implementation,
  interpret: bool,
) -> Array:
  operands = (x, kernel) if bias is None else (x, kernel, bias)
  check_arraylike("linear_mish", *operands)
  _check_operands(jnp.asarray(x), jnp.asarray(kernel), None if bias is None else jnp.asarray(bias))
  promoted, weak_type = promote_like(_reference, "linear_mish", *operands)
  bias = None if bias is None else promoted[2]
  # float64 (x64 mode), which no kernel has, takes the XLA path, as in `mish`.
  if implementation == "pallas" and jnp.result_type(*promoted) != jnp.float64:
    from mish_jax._src import pallas  # Lazy: the kernels import Pallas.

    # The matmul in the dtype of x and kernel alone: a float32 bias must not make a bfloat16
    # matmul a float32 (tf32) one, at half the tensor-core rate and twice the bytes.
    (x, kernel), _ = promote_like(_matmul_reference, "linear_mish", x, kernel)
    y = pallas.linear_mish(x, kernel, bias, interpret=interpret)
  else:
    z = jnp.matmul(promoted[0], promoted[1])
    y = mish(z if bias is None else z + bias, implementation="xla")
  return with_weak_type(y, weak_type)


def _matmul_reference(x: Array, kernel: Array) -> Array:
  """The composition whose dtype the Pallas path's matmul runs in."""
  return jax.nn.mish(jnp.matmul(x, kernel))


def _reference(x: Array, kernel: Array, bias: Array | None = None) -> Array:
  """The composition whose result type `linear_mish` has."""
  z = jnp.matmul(x, kernel)
  return jax.nn.mish(z if bias is None else z + bias)


class MishLinear(nnx.Module):
  """`nnx.Linear` followed by Mish, fused into one kernel with `implementation="pallas"`.

  A drop-in for `nnx.Linear` + `mish_jax.mish`: same arguments, initializers and parameter names
  (`kernel`, `bias`), so `nnx.update(mish_linear, nnx.state(linear))` copies the weights across,
  and the same random stream, so both draw the same initial weights from the same `rngs`.

  Example:
    >>> from flax import nnx
    >>> import jax.numpy as jnp
    >>> import mish_jax
    >>> layer = mish_jax.MishLinear(3, 4, rngs=nnx.Rngs(0))
    >>> layer(jnp.ones((2, 3))).shape
    (2, 4)
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    kernel_init: Initializer = default_kernel_init,
    bias_init: Initializer = default_bias_init,
    rngs: nnx.Rngs,
    implementation: str | None = None,
  ):
    """Creates the parameters.

    Args:
      in_features: the size of the inputs' last dimension.
      out_features: the size of the outputs' last dimension.
      use_bias: whether to add a bias.
      dtype: the dtype of the computation; None promotes the inputs and parameters.
      param_dtype: the dtype of the parameters.
      kernel_init: the kernel initializer, `nnx.Linear`'s by default (LeCun normal).
      bias_init: the bias initializer, zeros by default.
      rngs: the random streams; the parameters draw from `rngs.params`.
      implementation: `None`, `"xla"` or `"pallas"`, as in `linear_mish`.

    Raises:
      ValueError: for an unknown implementation, or a feature count that is not a positive
        integer (`nnx.Linear`'s default initializer divides by `in_features`).
    """
    resolve_implementation(implementation)  # Fails here rather than at the first call.
    for name, count in (("in_features", in_features), ("out_features", out_features)):
      if not isinstance(count, numbers.Integral) or isinstance(count, bool) or count < 1:
        raise ValueError(f"{name} must be a positive integer, got {count!r}")
    self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
    self.bias: nnx.Param[Array] | None
    if use_bias:
      self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
    else:
      self.bias = nnx.data(None)
    self.in_features = in_features
    self.out_features = out_features
    self.use_bias = use_bias
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.implementation = implementation

  def __call__(self, inputs: ArrayLike) -> Array:
    """Returns `mish(inputs @ kernel + bias)` over the inputs' last dimension.

    Args:
      inputs: `(..., in_features)` array.

    Returns:
      The `(..., out_features)` activations.
    """
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = dtypes.promote_dtype(
      (jnp.asarray(inputs), kernel, bias), dtype=self.dtype
    )
    return linear_mish(inputs, kernel, bias, implementation=self.implementation)
