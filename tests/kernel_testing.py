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
  return x * np.tanh(np.logaddexp(x, 0.0))


def mish_grad64(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  tanh_softplus = np.tanh(np.logaddexp(x, 0.0))
  sigmoid = 0.5 * (1.0 + np.tanh(0.5 * x))
  return tanh_softplus + x * (1.0 - tanh_softplus**2) * sigmoid


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
