"""Mish correctly rounded to bfloat16 and float16, from float32 arithmetic.

Both implementations round with these: the XLA path (`mish_jax`) and the elementwise kernels,
in the kernel body. Plain jnp and lax ops that Mosaic GPU lowers; this module imports only JAX,
and no Pallas, so `mish_jax` imports it eagerly.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jax import Array, lax

# Past HIGH, tanh(softplus(x)) rounds to 1 in float32 and mish(x) = x.
HIGH = 20.0
# bfloat16 halves x before its exp: e^(x/2) is still normal at -150, where mish rounds to 0.
_BFLOAT16_LOW = -150.0
# The float16 inputs whose float32 mish (the XLA path's and the kernels', on a CPU) lies within
# float32's error of the midpoint between two float16 values and rounds the wrong way, with their
# correctly rounded mish (float64 rounded once). Exhaustive tests keep the list complete.
_FLOAT16_HARD_CASES = (
  (0.0006103515625, 0.0003662109375),
  (1.5712890625, 1.4814453125),
  (-0.00047278404235839844, -0.0002834796905517578),
  (-0.0006103515625, -0.00036597251892089844),
)


def _times_power_of_two(x: Array, exponent: int) -> Array:
  """x * 2^exponent for positive normal float32 x and a finite result, by adding to the exponent.

  Integer arithmetic, because XLA folds chained constant factors into one, which can overflow.
  """
  bits = lax.bitcast_convert_type(x, jnp.int32) + (exponent << 23)
  return lax.bitcast_convert_type(bits, jnp.float32)


def mish_bfloat16(x: Array) -> Array:
  """Mish of a bfloat16 array, correctly rounded for every input, subnormals included.

  bfloat16 shares float32's exponent range, and CPUs flush float32 subnormals to zero in and out of
  arithmetic. One exp, of x / 2: h = e^(x/2) stays normal where e^x is subnormal (x < -87), so
  x e^x = (x h) h keeps its value; results below 2^-126 are built as integers, in units of 2^-133,
  the smallest bfloat16 subnormal.
  """
  bits = lax.bitcast_convert_type(x, jnp.int16).astype(jnp.int32)
  x32 = x.astype(jnp.float32)
  x_c = jnp.maximum(jnp.minimum(x32, HIGH), _BFLOAT16_LOW)
  h = jnp.exp(x_c / 2)
  t = h * h
  abs_x_h = -x_c * h  # |x| e^(x/2) where x < 0, the only place it is used
  y = jnp.where(x32 > HIGH, x32, -abs_x_h * h * (t + 2) / (t * (t + 2) + 2))
  is_subnormal_x = (bits & 0x7F80) == 0
  # Near 0, |mish(x)| = 0.6 |x|, with |x| in units of 2^-133 read off the bits (exact for
  # |x| < 2^-125, the only place it is used; a subnormal x reads as 0 in arithmetic). Far below,
  # |mish(x)| = |x| e^x = (|x| h 2^67)(h 2^66) in those units.
  y_units = jnp.where(
    x32 < -1,
    _times_power_of_two(abs_x_h, 67) * _times_power_of_two(h, 66),
    0.6 * (bits & 0x7FFF).astype(jnp.float32),
  )
  magnitude = lax.round(jnp.minimum(y_units, 128.0), lax.RoundingMethod.TO_NEAREST_EVEN)
  small_bits = (bits & 0x8000) | magnitude.astype(jnp.int32)
  y_small = lax.bitcast_convert_type(small_bits.astype(jnp.int16), jnp.bfloat16)
  return jnp.where(is_subnormal_x | (jnp.abs(y) < 2.0**-126), y_small, y.astype(jnp.bfloat16))


def mish_float16(x: Array, mish_float32: Callable[[Array], Array]) -> Array:
  """Mish of a float16 array, correctly rounded for every input: `mish_float32` rounded once,
  but for the 4 inputs where that rounds the wrong way, selected instead."""
  y = mish_float32(x.astype(jnp.float32)).astype(jnp.float16)
  for hard, correct in _FLOAT16_HARD_CASES:
    y = jnp.where(x == hard, jnp.asarray(correct, jnp.float16), y)
  return y
