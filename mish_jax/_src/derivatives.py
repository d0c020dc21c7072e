"""The Mish formulas both implementations differentiate with: mish', mish'' and their parts.

`activations` (the XLA path) and `pallas` (the kernels' `custom_jvp` rules, whose mish'' and
higher orders are these) import them from here; neither imports the other at import time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array, lax

# Past `HIGH[dtype]`, tanh(softplus(x)) rounds to 1 and 4x e^{-2x}, the derivative's correction,
# is below half an ulp of 1; below `LOW[dtype]`, e^x is 0 (float32: `exp_float32` makes it so).
# Clipping to [low, high] keeps every intermediate finite, so `jnp.where` never meets an inf or NaN,
# in value or in any derivative.
HIGH = {jnp.dtype(jnp.float32): 20.0, jnp.dtype(jnp.float64): 40.0}
LOW = {jnp.dtype(jnp.float32): -88.0, jnp.dtype(jnp.float64): -800.0}

# e^x = 2^k e^r, k = round(x / ln 2): ln 2 in two parts (Cody and Waite), the high one exact in 8
# bits so that k ln2_hi is exact; and Cephes' expf polynomial for (e^r - 1 - r) / r^2, |r| <= ln2/2.
_LOG2_E = 1.4426950408889634
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_EXP_POLYNOMIAL = (
  1.9875691500e-4,
  1.3981999507e-3,
  8.3334519073e-3,
  4.1665795894e-2,
  1.6666665459e-1,
  5.0000001201e-1,
)
# k + 1.5 * 2^23 + 127 keeps k + 127 in its low mantissa bits, exactly, for |k| < 2^22.
_EXPONENT_BIAS_SHIFTER = 1.5 * 2.0**23 + 127


def exp_float32(x: Array) -> Array:
  """e^x for float32 x in [-88, 20]: 0 where x < -87.68, so -88 gives exactly 0.

  XLA's CPU exp spends about half its instructions on clamps and a saturating float-to-int
  conversion that the clip before it makes redundant; without them the Mish forward pass runs
  faster than `jax.nn.silu`. Accurate to 1 ulp on the range, as XLA's own.
  """
  k = jnp.round(x * _LOG2_E)
  r = x - k * _LN2_HI - k * _LN2_LO
  polynomial = functools.reduce(lambda total, c: total * r + c, _EXP_POLYNOMIAL)
  exp_r = polynomial * (r * r) + r + 1
  # 2^k from exponent bits, k + 127 in [0, 156]; at k = -127 the bits are those of +0.0.
  biased_k = lax.bitcast_convert_type(k + _EXPONENT_BIAS_SHIFTER, jnp.int32)
  return exp_r * lax.bitcast_convert_type(biased_k << 23, jnp.float32)


def tanh_softplus_parts(x: Array) -> tuple[Array, Array, Array]:
  """Returns `(x_low, t, n)`: x_low = max(x, low), t = e^min(x_low, high), n = t (t + 2).

  tanh(softplus(x)) = n / (n + 2), with one exp per element: tanh(log(1 + t)) =
  ((1 + t)^2 - 1) / ((1 + t)^2 + 1).
  """
  x_low = jnp.maximum(x, LOW[x.dtype])
  x_c = jnp.minimum(x_low, HIGH[x.dtype])
  t = exp_float32(x_c) if x.dtype == jnp.float32 else jnp.exp(x_c)
  return x_low, t, t * (t + 2)


@jax.custom_jvp
def mish_derivative(x: Array) -> Array:
  x_low, t, n = tanh_softplus_parts(x)
  x_c = jnp.minimum(x_low, HIGH[x.dtype])
  d = n + 2
  # One division, over d^2 (at most e^80 after the clip, finite in float32); a shared reciprocal
  # would split XLA's loop fusion in two on CPU.
  slope = (n * d + 4 * x_c * (t * (1 + t))) / (d * d)
  return jnp.where(x > HIGH[x.dtype], jnp.ones_like(x), slope)


# Autodiff of the quotient above overflows float32 past x = 11. Instead, with s = tanh(softplus(x)),
# S = sech^2(softplus(x)) and σ = sigmoid(x): mish' = s + x S σ,
# mish'' = S σ (2 + x (1 - σ) - 2 x s σ), and s' = S σ, S' = -2 s S σ, σ' = σ (1 - σ) close the set,
# all bounded, for every order.
@mish_derivative.defjvp
def _mish_grad_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
  (x,), (x_dot,) = primals, tangents
  return mish_derivative(x), mish_second_derivative(x) * x_dot


def mish_second_derivative(x: Array) -> Array:
  """mish''(x) for float32 or float64 `x`, differentiable to any order (see above)."""
  x_c = jnp.maximum(jnp.minimum(x, HIGH[x.dtype]), LOW[x.dtype])
  s, sech2, sigmoid = _tanh_softplus(x), _sech2_softplus(x), jax.nn.sigmoid(x)
  return sech2 * sigmoid * (2 + x_c * (1 - sigmoid) - 2 * x_c * s * sigmoid)


@jax.custom_jvp
def _tanh_softplus(x: Array) -> Array:
  _, _, n = tanh_softplus_parts(x)
  return n / (n + 2)


@jax.custom_jvp
def _sech2_softplus(x: Array) -> Array:
  # sech^2(log(1 + t)) = (2 (1 + t) / (n + 2))^2, with no cancellation as s -> 1.
  _, t, n = tanh_softplus_parts(x)
  return jnp.square(2 * (1 + t) / (n + 2))


_tanh_softplus.defjvps(lambda x_dot, _, x: _sech2_softplus(x) * jax.nn.sigmoid(x) * x_dot)
_sech2_softplus.defjvps(
  lambda x_dot, sech2, x: -2 * _tanh_softplus(x) * sech2 * jax.nn.sigmoid(x) * x_dot
)
