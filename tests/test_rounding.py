"""`mish_jax.kernels.rounding`: the 16-bit rounding both implementations share, exhaustively.

The hard-case list is exactly what float32 needs: each of the 4 float16 inputs rounds the wrong way
without its select, and every other input rounds correctly from float32 alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from mish_jax.kernels import common, rounding

from mish_jax._src import activations
from tests.kernel_testing import every_finite, mish64


def _wrongly_rounded(actual: np.ndarray, x: np.ndarray) -> np.ndarray:
  expected = mish64(x.astype(np.float64)).astype(x.dtype)
  return x[actual.view(np.uint16) != expected.view(np.uint16)]


def test_bfloat16_every_input():
  x = every_finite(ml_dtypes.bfloat16)
  actual = np.asarray(jax.jit(rounding.mish_bfloat16)(x))
  assert _wrongly_rounded(actual, x).size == 0
  # Without the integer construction, float32 arithmetic flushes hundreds of tiny ones.
  plain = np.asarray(jax.jit(lambda v: common.mish_f32(v.astype(jnp.float32)).astype(v.dtype))(x))
  assert _wrongly_rounded(plain, x).size > 400


def test_float16_every_input_and_exactly_the_hard_cases():
  x = every_finite(np.float16)
  hard = sorted(value for value, _ in rounding._FLOAT16_HARD_CASES)
  for mish_float32 in (common.mish_f32, activations._mish_xla):
    actual = np.asarray(jax.jit(lambda v, f=mish_float32: rounding.mish_float16(v, f))(x))
    assert _wrongly_rounded(actual, x).size == 0
    plain = np.asarray(
      jax.jit(lambda v, f=mish_float32: f(v.astype(jnp.float32)).astype(v.dtype))(x)
    )
    assert sorted(_wrongly_rounded(plain, x).astype(float)) == hard
