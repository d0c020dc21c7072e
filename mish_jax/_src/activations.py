"""Mish and the activations it is compared with, and the registry that names them.

Conventions, those of `jax.nn`, for `mish`, `mish_grad`, `swish` and `linear_mish` alike, on both
implementations and with or without x64:

* The result has the dtype and weak type that `jax.nn.mish(x)` has: a floating input keeps its
  dtype and weak type (a Python float or a weakly typed array gives a weakly typed result),
  integers of up to 32 bits give float32 and 64-bit ones float64, bools the default float,
  weakly typed. Gradients have the dtype and weak type of their primal, as JAX's own do.
  (`jax.nn.silu` agrees for floating inputs and rejects integers; `swish` promotes them.)
* Lists, tuples, None and other non-array arguments raise TypeError, as `jax.nn` does.
* Two intended differences: complex inputs raise TypeError (the formulas and their clipping are
  for the real line; `jax.nn.mish` computes a complex result), and the values at the limits are
  exact: mish(-inf) = -0 and mish'(-inf) = 0 where `jax.nn.mish` gives NaN.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array, lax
from jax.typing import ArrayLike

from mish_jax._src import derivatives
from mish_jax._src.dispatch import Implementation, resolve_implementation
from mish_jax.kernels import rounding  # JAX only, no Pallas: the 16-bit rounding both paths share.

# The one private JAX name used, through the compat module (which imports no Pallas): no public API
# sets an array's weak type, which `jax.numpy` itself does this way.
from mish_jax.kernels.jax_compat import convert_element_type as _convert_element_type

_ARRAYLIKE_TYPES = (jax.Array, np.ndarray, np.generic, bool, int, float, complex)


def check_arraylike(name: str, *args: object) -> None:
  """Raises TypeError, as `jax.nn` does, for an argument that is not an array or a scalar."""
  for position, arg in enumerate(args):
    if not isinstance(arg, _ARRAYLIKE_TYPES) and not hasattr(arg, "__jax_array__"):
      raise TypeError(
        f"{name} requires ndarray or scalar arguments, got {type(arg)} at position {position}."
      )


def check_real(name: str, **arrays: Array) -> None:
  """Raises TypeError for a complex array, naming it."""
  for arg_name, a in arrays.items():
    if jnp.issubdtype(a.dtype, jnp.complexfloating):
      raise TypeError(f"{name} is defined for real inputs only, got {arg_name} of dtype {a.dtype}")


def promote_like(
  reference: Callable[..., Array], name: str, *args: ArrayLike
) -> tuple[list[Array], bool]:
  """Checks `args` and finds the result type that `reference(*args)` has.

  Args:
    reference: the `jax.nn` function whose conventions to follow, e.g. `jax.nn.mish`.
    name: the public function's name, for error messages.
    *args: its array arguments.

  Returns:
    `(arrays, weak_type)`: `args` as strongly typed arrays of the dtype of `reference(*args)`,
    found by tracing it alone, and that result's weak type.

  Raises:
    TypeError: for a non-array argument or a complex one.
  """
  check_arraylike(name, *args)
  arrays = [jnp.asarray(a) for a in args]
  check_real(name, **{f"argument {i}": a for i, a in enumerate(arrays)})
  result = jax.eval_shape(reference, *arrays)
  return [lax.convert_element_type(a, result.dtype) for a in arrays], result.weak_type


def with_weak_type(y: Array, weak_type: bool) -> Array:
  """`y`, weakly typed if `weak_type` (a no-op otherwise); differentiable."""
  return _convert_element_type(y, y.dtype, weak_type=True) if weak_type else y


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """float16/bfloat16 are computed in float32; float32 and float64 in themselves."""
  return jnp.dtype(jnp.float64) if dtype == jnp.float64 else jnp.dtype(jnp.float32)


def _mish_xla(x: Array) -> Array:
  """Mish in `x.dtype` (float32 or float64)."""
  # Past `derivatives.HIGH`, n / (n + 2) is exactly 1: mish(x) = x with no select, +inf included.
  x_low, _, n = derivatives.tanh_softplus_parts(x)
  return x_low * (n / (n + 2))


@functools.partial(jax.jit, static_argnames=("implementation", "interpret"))
def _mish_jit(x: ArrayLike, implementation: Implementation, interpret: bool) -> Array:
  (x,), weak_type = promote_like(jax.nn.mish, "mish", x)
  # float64 (x64 mode), which no kernel has (a GPU runs it at a fraction of float32's rate), takes
  # the XLA path: jax.nn.mish's dtype, as JAX's own tests call for.
  if implementation == "pallas" and x.dtype != jnp.float64:
    from mish_jax._src import pallas  # Lazy: the kernels import Pallas.

    return with_weak_type(pallas.mish(x, interpret=interpret), weak_type)
  return with_weak_type(_mish_rematerialized(x), weak_type)


def mish(x: ArrayLike, implementation: str | None = None) -> Array:
  r"""Mish activation function.

  Computes the element-wise function

  .. math::
    \mathrm{mish}(x) = x \cdot \tanh(\mathrm{softplus}(x))
      = x \cdot \frac{n}{n + 2}, \qquad n = e^x (e^x + 2)

  with a single exponential per element and no overflow for any input. Unlike `jax.nn.mish`,
  its derivative is a custom rule, exact at the limits (mish'(+inf) = 1, mish'(-inf) = 0) and
  itself differentiable, so `jax.hessian` and higher orders work.

  The result has the dtype and weak type of `jax.nn.mish(x)` (see the module docstring). On the
  XLA path every float16 and bfloat16 input is correctly rounded, float32 is within 3e-7 of the
  exact value (relative) and float64 within 3.2e-15. The Pallas path (float16, bfloat16,
  float32; float64 takes the XLA path) is differentiable to any order, in both modes, with mish'
  from a kernel and higher derivatives from the same formulas; see the README for its limits
  (interpret mode under `shard_map` over several devices).

  For more information, see Misra, `Mish: A Self Regularized Non-Monotonic Neural Activation
  Function <https://arxiv.org/abs/1908.08681>`_.

  Args:
    x: input array.
    implementation: `None` (the fastest for the backend), `"xla"` (jitted jnp) or `"pallas"` (the
      Pallas kernels; interpreted on backends where Pallas does not compile, such as CPU; float64
      takes the XLA path).

  Returns:
    An array of the shape of `x`.

  Raises:
    TypeError: if `x` is not an array or a scalar, or is complex.
    ValueError: if `implementation` is not one of the above.

  Example:
    >>> import jax.numpy as jnp
    >>> import mish_jax
    >>> mish_jax.mish(jnp.array([-jnp.inf, -1.0, 0.0, 1.0, jnp.inf]))
    Array([-0.        , -0.30340147,  0.        ,  0.86509836,         inf],      dtype=float32)
  """
  # Resolved before jit traces: inside, a committed array's device is no longer known.
  return _mish_jit(x, *resolve_implementation(implementation, x))


@jax.custom_jvp
def _mish(x: Array) -> Array:
  if x.dtype == jnp.bfloat16:
    return rounding.mish_bfloat16(x)
  if x.dtype == jnp.float16:
    return rounding.mish_float16(x, _mish_xla)
  return _mish_xla(x.astype(_compute_dtype(x.dtype))).astype(x.dtype)


# Reverse mode keeps only x and recomputes mish and mish' from it (one exp each): a training step
# then holds as much activation memory as with ReLU, and in measurements here it ran no slower
# than keeping mish'(x), since writing and reading that array costs more than the exp.
_mish_rematerialized = jax.checkpoint(_mish)


# A rule of plain jnp ops rather than autodiff of the clipped forward: exact limits, one exp, and
# itself differentiable (below), so higher orders work.
@_mish.defjvp
def _mish_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
  (x,), (x_dot,) = primals, tangents
  compute_dtype = _compute_dtype(x.dtype)
  y_dot = derivatives.mish_derivative(x.astype(compute_dtype)) * x_dot.astype(compute_dtype)
  return _mish(x), y_dot.astype(x.dtype)


@jax.jit
def mish_grad(x: ArrayLike) -> Array:
  r"""The derivative of Mish, element-wise.

  .. math::
    \mathrm{mish}'(x) = \frac{n}{n + 2} + \frac{4 x e^x (1 + e^x)}{(n + 2)^2},
      \qquad n = e^x (e^x + 2)

  It is differentiable to any order, with every derivative finite for finite inputs.

  Args:
    x: input array.

  Returns:
    mish'(x), of the shape of `x` and the dtype and weak type of `jax.nn.mish(x)`
    (float16/bfloat16 computed in float32).

  Raises:
    TypeError: if `x` is not an array or a scalar, or is complex.

  Example:
    >>> import mish_jax
    >>> mish_jax.mish_grad(0.0)
    Array(0.6, dtype=float32, weak_type=True)
  """
  (x,), weak_type = promote_like(jax.nn.mish, "mish_grad", x)
  return with_weak_type(
    derivatives.mish_derivative(x.astype(_compute_dtype(x.dtype))).astype(x.dtype), weak_type
  )


@jax.jit
def relu(x: ArrayLike) -> Array:
  r"""Rectified linear unit, :math:`\max(x, 0)`; `jax.nn.relu`, re-exported for the family.

  Example:
    >>> import mish_jax
    >>> mish_jax.relu(-1.0)
    Array(0., dtype=float32, weak_type=True)
  """
  return jax.nn.relu(x)


@jax.jit
def swish(x: ArrayLike, beta: ArrayLike = 1.0) -> Array:
  r"""Swish, :math:`x \cdot \sigma(\beta x)` (Ramachandran et al. 2017); `beta = 1` is SiLU.

  Args:
    x: input array.
    beta: the slope inside the sigmoid; a scalar or an array broadcastable to `x`.

  Returns:
    An array of the shape of `x` and the dtype and weak type of `jax.nn.mish(x)`, which are
    those of `jax.nn.silu(x)` for floating `x`; `beta` is cast to that dtype.

  Raises:
    TypeError: if `x` or `beta` is not an array or a scalar, or is complex.

  Example:
    >>> import mish_jax
    >>> mish_jax.swish(1.0)
    Array(0.7310586, dtype=float32, weak_type=True)
  """
  check_arraylike("swish", x, beta)
  (x,), weak_type = promote_like(jax.nn.mish, "swish", x)
  beta = jnp.asarray(beta)
  check_real("swish", beta=beta)
  return with_weak_type(x * jax.nn.sigmoid(beta.astype(x.dtype) * x), weak_type)


@functools.partial(jax.jit, static_argnames=("approximate",))
def gelu(x: ArrayLike, approximate: bool = False) -> Array:
  r"""Gaussian error linear unit, :math:`x \Phi(x)`; exact (erf) by default, unlike `jax.nn.gelu`.

  Example:
    >>> import mish_jax
    >>> mish_jax.gelu(1.0)
    Array(0.8413447, dtype=float32)
  """
  return jax.nn.gelu(x, approximate=approximate)


_REGISTRY: dict[str, Callable[..., Array]] = {
  "relu": relu,
  "swish": swish,
  "mish": mish,
  "gelu": gelu,
  "jax_mish": jax.nn.mish,  # The reference: plain x * tanh(softplus(x)), autodiff derivative.
  "mish_pallas": functools.partial(mish, implementation="pallas"),
}
ACTIVATIONS: tuple[str, ...] = tuple(_REGISTRY)


def get_activation(name: str, **kwargs) -> Callable[[ArrayLike], Array]:
  """Returns the activation registered under `name`, with `kwargs` bound.

  Args:
    name: one of `ACTIVATIONS`: "relu", "swish", "mish", "gelu", "jax_mish" (`jax.nn.mish`,
      the reference) or "mish_pallas" (`mish` with `implementation="pallas"`).
    **kwargs: keyword arguments bound to the activation, e.g. `beta=1.5` for Swish-beta; each must
      be one of the activation's own arguments after `x`.

  Returns:
    A callable from an array to an array, usable as a Flax activation.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones), an unknown
      `implementation`, or an `implementation` for "mish_pallas", which has its own.
    TypeError: for a keyword the activation does not take; the message lists those it does.

  Example:
    >>> import mish_jax
    >>> swish_beta = mish_jax.get_activation("swish", beta=2.0)
    >>> swish_beta(1.0)
    Array(0.880797, dtype=float32, weak_type=True)
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(ACTIVATIONS)}")
  activation = _REGISTRY[name]
  if name == "mish_pallas" and "implementation" in kwargs:
    raise ValueError(
      "'mish_pallas' is mish with implementation='pallas'; for another implementation use "
      f"get_activation('mish', implementation={kwargs['implementation']!r})"
    )
  # Checked now rather than at the first call, deep inside a model.
  accepted = [p for p in inspect.signature(activation).parameters if p != "x"]
  if name == "mish_pallas":
    accepted.remove("implementation")
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise TypeError(
      f"activation {name!r} takes no argument {', '.join(map(repr, unknown))}; "
      f"it accepts {', '.join(accepted) if accepted else 'none besides x'}"
    )
  if "implementation" in kwargs:
    resolve_implementation(kwargs["implementation"])
  return functools.partial(activation, **kwargs) if kwargs else activation
