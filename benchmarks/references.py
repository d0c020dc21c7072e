"""float64 numpy references for every benchmarked op, and the tolerance check.

The references are independent of the code under test: definitions in float64 numpy, evaluated on
the exact values the benchmark fed in (after rounding to the benchmarked dtype).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

Reference = Callable[[np.ndarray], np.ndarray]


def _softplus(x: np.ndarray) -> np.ndarray:
  return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * x))  # No overflow for any x, unlike 1 / (1 + e^-x).


def mish(x: np.ndarray) -> np.ndarray:
  """x tanh(softplus(x))."""
  return x * np.tanh(_softplus(x))


def mish_grad(x: np.ndarray) -> np.ndarray:
  """tanh(sp(x)) + x sech^2(sp(x)) sigmoid(x); sech^2 as 1 / cosh^2, with no cancellation."""
  sp = _softplus(x)
  return np.tanh(sp) + x * _sigmoid(x) / np.cosh(sp) ** 2


def silu(x: np.ndarray) -> np.ndarray:
  """x sigmoid(x)."""
  return x * _sigmoid(x)


def silu_grad(x: np.ndarray) -> np.ndarray:
  """sigmoid(x) (1 + x (1 - sigmoid(x)))."""
  s = _sigmoid(x)
  return s * (1.0 + x * (1.0 - s))


def relu(x: np.ndarray) -> np.ndarray:
  """max(x, 0)."""
  return np.maximum(x, 0.0)


def relu_grad(x: np.ndarray) -> np.ndarray:
  """1 for x > 0, else 0 (as `jax.nn.relu`'s derivative, 0 at 0)."""
  return (x > 0).astype(np.float64)


# name -> (forward, derivative), for the activations of the elementwise section.
ACTIVATIONS: dict[str, tuple[Reference, Reference]] = {
  "relu": (relu, relu_grad),
  "silu": (silu, silu_grad),
  "mish": (mish, mish_grad),
}

# (rtol, atol) of the elementwise ops, per dtype: a few units in the last place of the dtype,
# loose enough for `jax.nn`'s own rounding (its bfloat16 derivatives, computed in bfloat16, were
# off by up to 1.7e-2), tight enough to catch a wrong formula. The absolute part covers results
# that cancel to near 0 (mish' at x = -1.19).
ELEMENTWISE_TOLERANCE = {
  jnp.dtype(jnp.float32): (2e-5, 2e-6),
  jnp.dtype(jnp.bfloat16): (2**-5, 2**-7),
}

# The fused dense layer's (rtol, atol-as-a-share-of-max|reference|), per dtype: a K- or M-long
# sum rounded to the dtype.
FUSED_TOLERANCE = {
  jnp.dtype(jnp.float32): (1e-4, 1e-4),
  jnp.dtype(jnp.bfloat16): (2**-5, 2**-5),
}


def as_float64(x: Any) -> np.ndarray:
  """The exact values of a JAX or numpy array (of any float dtype), as float64 numpy."""
  return np.asarray(np.asarray(x).astype(np.float32), np.float64)


def check(actual: Any, expected: np.ndarray, rtol: float, atol: float) -> dict[str, Any]:
  """Compares `actual` with a float64 reference: |actual - expected| <= atol + rtol |expected|.

  Args:
    actual: the benchmarked result (any float dtype).
    expected: the float64 reference, of the same shape.
    rtol: the relative tolerance.
    atol: the absolute tolerance.

  Returns:
    A JSON-ready dict: `ok`, `max_abs_error`, `worst` (the largest error over its allowance;
    `ok` is `worst <= 1`), `rtol`, `atol`; `ok` is False for any non-finite mismatch.
  """
  actual = as_float64(actual)
  error = np.abs(actual - expected)
  if not np.all(np.isfinite(error)):
    return {
      "ok": False,
      "max_abs_error": float("inf"),
      "worst": float("inf"),
      "rtol": rtol,
      "atol": atol,
    }
  worst = float(np.max(error / (atol + rtol * np.abs(expected)), initial=0.0))
  return {
    "ok": worst <= 1.0,
    "max_abs_error": float(np.max(error, initial=0.0)),
    "worst": worst,
    "rtol": rtol,
    "atol": atol,
  }
