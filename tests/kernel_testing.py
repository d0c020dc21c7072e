"""Shared references and comparisons for the Pallas kernel tests.

References: float64 NumPy, the XLA `mish_jax.mish`, `jax.nn.mish`, and the unfused jnp
compositions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
# Below this, e^x is subnormal and CPUs flush it to zero: compared in absolute terms only.
TINY = 1e-30


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """How many representable values lie between `a` and `b`, element-wise (+0 and -0 are one)."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.dtype == b.dtype, (a.dtype, b.dtype)
  int_type = {2: np.int16, 4: np.int32}[a.dtype.itemsize]
  lowest = np.iinfo(int_type).min

  def ordered(v):
    i = v.view(int_type).astype(np.int64)
    return np.where(i < 0, lowest - i, i)

  return np.abs(ordered(a) - ordered(b))


def assert_ulp_close(actual, expected, max_ulp: int, what: str = "") -> None:
  """Equal NaN positions, at most `max_ulp` apart where normal, within TINY where not."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape and actual.dtype == expected.dtype
  np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=what)
  ok = ~np.isnan(expected)
  big = ok & (np.abs(expected.astype(np.float64)) > TINY)
  distance = ulp_distance(actual[big], expected[big])
  assert distance.size == 0 or distance.max() <= max_ulp, (
    f"{what}: {distance.max()} ulp apart at x index {np.flatnonzero(big)[distance.argmax()]}"
  )
  small = ok & ~big
  np.testing.assert_allclose(
    actual[small].astype(np.float64),
    expected[small].astype(np.float64),
    rtol=0,
    atol=TINY,
    err_msg=what,
  )


def mish64(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  with np.errstate(invalid="ignore"):  # -inf * 0: the limit, -0, instead.
    return np.where(np.isneginf(x), -0.0, x * np.tanh(np.logaddexp(x, 0.0)))


def _sigmoid_tanh_softplus_sech2_64(x: np.ndarray) -> tuple[np.ndarray, ...]:
  # Each without cancellation: 1 - tanh(u)^2 and 0.5 (1 + tanh(x / 2)) lose all digits once
  # they fall below float64's epsilon (x < -37 for the sigmoid), 1 / cosh(u)^2 and expit do not.
  with np.errstate(over="ignore", invalid="ignore"):
    softplus = np.logaddexp(x, 0.0)
    return 1.0 / (1.0 + np.exp(-x)), np.tanh(softplus), 1.0 / np.cosh(softplus) ** 2


def mish_grad64(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  sigmoid, tanh_softplus, sech2 = _sigmoid_tanh_softplus_sech2_64(x)
  with np.errstate(invalid="ignore"):  # inf * 0 at x = +-inf: the limits 1 and 0 instead.
    slope = tanh_softplus + x * sech2 * sigmoid
  return np.where(np.isinf(x), x > 0, slope)


def mish_second_derivative64(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  sigmoid, tanh_softplus, sech2 = _sigmoid_tanh_softplus_sech2_64(x)
  with np.errstate(invalid="ignore"):
    curvature = sigmoid * sech2 * (2.0 + x * (1.0 - sigmoid) - 2.0 * x * sigmoid * tanh_softplus)
  return np.where(np.isinf(x), 0.0, curvature)


def condition_bound(expected64, sensitivity64, dtype, float32_ulps: int) -> np.ndarray:
  """The error allowed against a float64 reference `expected64`, element-wise.

  One ulp of `dtype` at the reference (rounding to it), plus `float32_ulps` float32 roundings
  amplified by the function's condition: `sensitivity64 = |f(x)| + |x f'(x)|` (times |g| for a
  product f'(x) g), so an error of relative size eps in x, or in e^x, or in f, stays within.
  On a GPU, `exp` is not the CPU's: then only this bound, not ulps against XLA, can hold.
  """
  finfo = jnp.finfo(dtype)
  magnitude = np.maximum(np.abs(expected64), float(finfo.smallest_normal))
  ulp = np.exp2(np.floor(np.log2(magnitude)) - finfo.nmant)
  return ulp + float32_ulps * 2.0**-23 * sensitivity64 + TINY


def assert_within_condition_bound(
  actual, expected64, sensitivity64, float32_ulps: int, what: str = ""
) -> None:
  """Same NaNs and infinities as float64; elsewhere within `condition_bound`."""
  actual = np.asarray(actual)
  actual64, expected64 = actual.astype(np.float64), np.asarray(expected64, np.float64)
  exceptional = ~np.isfinite(expected64)
  np.testing.assert_array_equal(actual64[exceptional], expected64[exceptional], err_msg=what)
  error = np.abs(actual64[~exceptional] - expected64[~exceptional])
  bound = condition_bound(expected64, np.asarray(sensitivity64), actual.dtype, float32_ulps)
  excess = error / bound[~exceptional]
  if excess.size and excess.max() > 1:
    index = np.flatnonzero(~exceptional)[excess.argmax()]
    raise AssertionError(f"{what}: {excess.max():.3g} times the bound at index {index}")


def every_finite(dtype) -> np.ndarray:
  """Every finite value of a 16-bit float dtype."""
  values = np.arange(2**16, dtype=np.uint16).view(dtype)
  return values[np.isfinite(values.astype(np.float32))]


def random_array(shape, dtype, seed: int = 0, scale: float = 4.0) -> jax.Array:
  """Normal samples that reach past both clips (-20 < x < 20 mostly, tails beyond)."""
  return (scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32)).astype(dtype)


def cuda_module_text(fn, *args) -> str:
  """The StableHLO text of `jax.jit(fn)(*args)` lowered for CUDA, on any host.

  `jax.export` runs the whole Pallas to Mosaic GPU lowering without a GPU, so a kernel that a
  GPU would refuse to compile for its shapes, layouts or block sizes fails here already.
  """
  args = [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in args]
  return jax.export.export(jax.jit(fn), platforms=("cuda",))(*args).mlir_module()


def assert_lowers_to_mosaic_gpu(fn, *args) -> str:
  """Lowers `fn(*args)` for CUDA and asserts the module holds a Mosaic GPU custom call."""
  text = cuda_module_text(fn, *args)
  assert "stablehlo.custom_call @mosaic_gpu" in text, (
    f"no Mosaic GPU kernel in the lowering of {fn}"
  )
  return text


def random_numpy(shape, dtype, seed: int = 0, scale: float = 4.0) -> np.ndarray:
  """As `random_array`, drawn by NumPy: no XLA compilation per shape."""
  normal = np.random.default_rng(seed).standard_normal(shape, np.float32)
  return (scale * normal).astype(jnp.dtype(dtype))


def elementwise_on_buckets(fn, *arrays, bucket: int = 2**15) -> np.ndarray:
  """`fn(*arrays)` for an elementwise `fn`, run on zero-padded flat buckets of `bucket` elements.

  Every shape up to `bucket` elements then shares one compilation of `fn` per dtype.
  """
  arrays = [np.asarray(a) for a in arrays]
  shape, size = arrays[0].shape, arrays[0].size
  padded = bucket * max(1, -(-size // bucket))
  flat = [np.pad(a.reshape(-1), (0, padded - size)) for a in arrays]
  return np.asarray(fn(*flat))[:size].reshape(shape)
