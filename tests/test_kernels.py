"""Tests of the Pallas kernels in `mish_jax.kernels`.

One base class per kernel holds the tests; its `Interpret` subclass runs them in Pallas interpret
mode (CI, on CPU), its `Compiled` subclass compiles them and runs only where JAX has a GPU.
References: float64 NumPy, the XLA `mish_jax.mish`, `jax.nn.mish`, and the unfused jnp
compositions.

In interpret mode Pallas fills every output buffer with NaN before the kernel runs (see
`test_interpret_mode_poisons_outputs`), so an output without NaN for finite inputs proves that
the kernel wrote every element, the ragged tail included.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from mish_jax.kernels import linear_mish as linear_mish_kernels
from mish_jax.kernels import mish as mish_kernels

from mish_jax._src import activations

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
# Below this, e^x is subnormal and CPUs flush it to zero: compared in absolute terms only.
_TINY = 1e-30


def _ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """How many representable values lie between `a` and `b`, element-wise (+0 and -0 are one)."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.dtype == b.dtype, (a.dtype, b.dtype)
  int_type = {2: np.int16, 4: np.int32}[a.dtype.itemsize]
  lowest = np.iinfo(int_type).min

  def ordered(v):
    i = v.view(int_type).astype(np.int64)
    return np.where(i < 0, lowest - i, i)

  return np.abs(ordered(a) - ordered(b))


def _assert_ulp_close(actual, expected, max_ulp: int, what: str = "") -> None:
  """Equal NaN positions, at most `max_ulp` apart where normal, within _TINY where not."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape and actual.dtype == expected.dtype
  np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=what)
  ok = ~np.isnan(expected)
  big = ok & (np.abs(expected.astype(np.float64)) > _TINY)
  distance = _ulp_distance(actual[big], expected[big])
  assert distance.size == 0 or distance.max() <= max_ulp, (
    f"{what}: {distance.max()} ulp apart at x index {np.flatnonzero(big)[distance.argmax()]}"
  )
  small = ok & ~big
  np.testing.assert_allclose(
    actual[small].astype(np.float64),
    expected[small].astype(np.float64),
    rtol=0,
    atol=_TINY,
    err_msg=what,
  )


def _mish64(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x * np.tanh(np.logaddexp(x, 0.0))


def _mish_grad64(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  tanh_softplus = np.tanh(np.logaddexp(x, 0.0))
  sigmoid = 0.5 * (1.0 + np.tanh(0.5 * x))
  return tanh_softplus + x * (1.0 - tanh_softplus**2) * sigmoid


def _random(shape, dtype, seed: int = 0, scale: float = 4.0) -> jax.Array:
  """Normal samples that reach past both clips (-20 < x < 20 mostly, tails beyond)."""
  return (scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32)).astype(dtype)


class MishKernelTestBase:
  """The elementwise Mish kernels, against the XLA implementation and float64."""

  interpret: bool

  def _mish(self, x, **kwargs):
    return mish_kernels.mish(x, interpret=self.interpret, **kwargs)

  def _block_size(self, size: int) -> int:
    # Interpret mode pays per grid step: few big blocks there; the default when compiled.
    if self.interpret and size > mish_kernels.DEFAULT_BLOCK_SIZE:
      return 2**17
    return mish_kernels.DEFAULT_BLOCK_SIZE

  @pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
  @pytest.mark.parametrize(
    "shape", [(1,), (127,), (129,), (1000003,), (3, 5, 7), (2, 3, 4, 5)], ids=str
  )
  def test_forward_and_gradient_match_references(self, shape, dtype):
    x = _random(shape, dtype)
    g = _random(shape, dtype, seed=1, scale=1.0)
    size = int(np.prod(shape))
    y, vjp = jax.vjp(lambda v: self._mish(v, block_size=self._block_size(size)), x)
    (dx,) = vjp(g)
    assert y.shape == dx.shape == shape and y.dtype == dx.dtype == dtype
    # Fully written: interpret mode starts every output as NaN.
    assert not np.isnan(np.asarray(y, np.float32)).any()
    assert not np.isnan(np.asarray(dx, np.float32)).any()

    max_ulp = 2 if dtype == jnp.float32 else 1
    _assert_ulp_close(y, activations.mish(x, implementation="xla"), max_ulp, "vs XLA mish")
    x32 = x.astype(jnp.float32)
    dx_xla = (activations.mish_grad(x32) * g.astype(jnp.float32)).astype(dtype)
    _assert_ulp_close(dx, dx_xla, max_ulp, "gradient vs XLA mish_grad")

    # float64: correctly rounded to 16 bits, or 4 ulp of float32 (the XLA version's own error).
    x64 = np.asarray(x, np.float64)
    _assert_ulp_close(y, _mish64(x64).astype(dtype), 4 if dtype == jnp.float32 else 1, "vs float64")
    tol = {jnp.float32: 2e-6, jnp.bfloat16: 1e-2, jnp.float16: 2e-3}[dtype]
    np.testing.assert_allclose(
      np.asarray(dx, np.float64),
      _mish_grad64(x64) * np.asarray(g, np.float64),
      rtol=tol,
      atol=tol,
    )

  def test_matches_jax_nn_mish(self):
    x = _random((1000,), jnp.float32)
    np.testing.assert_allclose(self._mish(x), jax.nn.mish(x), rtol=2e-6, atol=1e-30)
    np.testing.assert_allclose(
      jax.grad(lambda v: self._mish(v).sum())(x),
      jax.grad(lambda v: jax.nn.mish(v).sum())(x),
      rtol=1e-5,
      atol=1e-6,
    )

  def test_special_values(self):
    x = jnp.array(
      [
        -jnp.inf,
        -3e38,
        -1e4,
        -150.0,
        -104.0,
        -90.0,
        -20.0,
        -1.0,
        -0.0,
        0.0,
        1e-30,
        1.0,
        19.9,
        20.0,
        20.5,
        100.0,
        3e38,
        jnp.inf,
        jnp.nan,
      ],
      jnp.float32,
    )
    y = np.asarray(self._mish(x))
    dx = np.asarray(jax.vmap(jax.grad(self._mish))(x))
    _assert_ulp_close(y, activations.mish(x, implementation="xla"), 2, "value")
    _assert_ulp_close(dx, activations.mish_grad(x), 2, "derivative")
    # The limits, exactly: mish(-inf) = 0, mish(inf) = inf, mish'(-inf) = 0, mish'(inf) = 1.
    np.testing.assert_array_equal(y[[0, -4, -3, -2]], np.float32([0.0, 100.0, 3e38, np.inf]))
    np.testing.assert_array_equal(dx[[0, 1, -4, -3, -2]], np.float32([0.0, 0.0, 1.0, 1.0, 1.0]))
    assert np.isnan(y[-1]) and np.isnan(dx[-1])

  def test_jit_vmap_grad(self):
    x = _random((3, 50), jnp.float32)

    @jax.jit
    def per_row_grads(x):
      return jax.vmap(jax.grad(lambda row: jnp.sum(self._mish(row) ** 2)))(x)

    y = activations.mish(x, implementation="xla")
    expected = 2 * y * activations.mish_grad(x)
    np.testing.assert_allclose(per_row_grads(x), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(jax.vmap(self._mish)(x), self._mish(x))

  @pytest.mark.parametrize("block_size", [128, 256, 4096])
  def test_block_size_does_not_change_the_result(self, block_size):
    x = _random((3, 333), jnp.bfloat16)
    np.testing.assert_array_equal(self._mish(x, block_size=block_size), self._mish(x))

  def test_triton_backend(self):
    if not self.interpret and jax.default_backend() != "gpu":
      pytest.skip("Triton compiles only on GPU")
    x = _random((1000,), jnp.float32)
    np.testing.assert_array_equal(self._mish(x, backend="triton"), self._mish(x))

  def test_empty_and_scalar(self):
    assert self._mish(jnp.zeros((0, 3), jnp.float32)).shape == (0, 3)
    np.testing.assert_array_equal(self._mish(jnp.float32(1.0)), activations.mish(1.0))

  @pytest.mark.parametrize(
    "x, kwargs, error",
    [
      (np.ones(3, np.complex64), {}, TypeError),
      (np.ones(3, np.int32), {}, TypeError),
      (np.ones(3, np.float32), {"block_size": 100}, ValueError),
      (np.ones(3, np.float32), {"block_size": 64}, ValueError),
      (np.ones(3, np.float32), {"backend": "cuda"}, ValueError),
    ],
  )
  def test_bad_arguments(self, x, kwargs, error):
    with pytest.raises(error):
      self._mish(x, **kwargs)


class TestMishKernelInterpret(MishKernelTestBase):
  interpret = True

  def test_interpret_mode_poisons_outputs(self):
    """The premise of the 'fully written' checks: unwritten outputs come back NaN."""

    def write_first_block_only(x_ref, y_ref):
      @pl.when(pl.program_id(0) == 0)
      def _():
        y_ref[...] = x_ref[...]

    x = jnp.ones((4, 128), jnp.float32)
    y = pl.pallas_call(
      write_first_block_only,
      out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
      grid=(2,),
      in_specs=[pl.BlockSpec((2, 128), lambda i: (i, 0))],
      out_specs=pl.BlockSpec((2, 128), lambda i: (i, 0)),
      interpret=True,
    )(x)
    assert not np.isnan(y[:2]).any() and np.isnan(y[2:]).all()

  def test_big_block_is_only_refused_when_compiled_on_mosaic(self):
    x = _random((100,), jnp.float32)
    np.testing.assert_array_equal(self._mish(x, block_size=2**17), self._mish(x))
    with pytest.raises(ValueError, match="at most"):
      mish_kernels.mish(x, block_size=2**17, interpret=False)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="compiled Pallas kernels need a GPU")
class TestMishKernelCompiled(MishKernelTestBase):
  interpret = False


def _linear_operands(x_shape, n, dtype, seed=0):
  k = x_shape[-1]
  keys = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(keys[0], x_shape, jnp.float32).astype(dtype)
  kernel = (jax.random.normal(keys[1], (k, n)) / np.sqrt(max(k, 1))).astype(dtype)
  bias = jax.random.normal(keys[2], (n,), jnp.float32).astype(dtype)
  g = jax.random.normal(keys[3], (*x_shape[:-1], n), jnp.float32).astype(dtype)
  return x, kernel, bias, g


def _unfused_float32(x, kernel, bias):
  """The XLA `mish_jax.mish` of a float32-accumulated matmul: the kernel's math, unfused."""
  z = jnp.matmul(x, kernel, preferred_element_type=jnp.float32) + bias.astype(jnp.float32)
  return activations.mish(z, implementation="xla").astype(x.dtype)


def _relative_error(actual, expected) -> float:
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


# Relative (Frobenius) error allowed against the unfused float32-accumulated composition.
_LINEAR_TOL = {jnp.float32: 2e-6, jnp.bfloat16: 1e-2, jnp.float16: 2e-3}


class LinearMishKernelTestBase:
  """The fused mish(x @ kernel + bias) kernel, against the unfused compositions."""

  interpret: bool

  def _linear_mish(self, *args, **kwargs):
    return linear_mish_kernels.linear_mish(*args, interpret=self.interpret, **kwargs)

  @pytest.mark.parametrize(
    "x_shape, n, backend, dtype",
    [
      (x_shape, n, backend, dtype)
      for x_shape, n in [
        ((1, 1), 1),
        ((5, 7), 3),
        ((130, 200), 260),
        ((128, 64), 128),
        ((2, 3, 17), 33),
      ]
      for backend, dtype in [("mosaic_gpu", jnp.float32), ("mosaic_gpu", jnp.bfloat16)]
    ]
    + [
      ((130, 200), 260, "triton", jnp.float32),
      ((2, 3, 17), 33, "triton", jnp.float16),
    ],
    ids=lambda v: jnp.dtype(v).name if isinstance(v, type) else str(v),
  )
  def test_forward_and_gradients_match_unfused(self, x_shape, n, backend, dtype):
    x, kernel, bias, g = _linear_operands(x_shape, n, dtype)
    y, vjp = jax.vjp(lambda *a: self._linear_mish(*a, backend=backend), x, kernel, bias)
    grads = vjp(g)
    y_ref = linear_mish_kernels.linear_mish_reference(x, kernel, bias)
    # Gradients against the same derivative formula: x tanh(softplus(x)) differentiated by
    # autodiff loses relative precision near mish's minimum, where mish'(z) = 0.
    grads_ref = jax.vjp(_unfused_float32, x, kernel, bias)[1](g)

    assert y.shape == (*x_shape[:-1], n) and y.dtype == dtype
    assert not np.isnan(np.asarray(y, np.float32)).any()  # Fully written, ragged tiles too.
    tol = _LINEAR_TOL[dtype]
    assert _relative_error(y, y_ref) <= tol
    # The XLA composition rounds x @ kernel to `dtype` before the bias and Mish.
    z = jnp.matmul(x, kernel) + bias
    assert _relative_error(y, activations.mish(z, implementation="xla")) <= 2 * tol
    # Errors are judged against the gradients' scale with mish' = 1: near mish's minimum,
    # mish'(z) = 0 and a gradient element is all rounding error, in any implementation.
    g64, x64, kernel64 = (
      np.asarray(a, np.float64).reshape(-1, a.shape[-1]) for a in (g, x, kernel)
    )
    scales = (g64 @ kernel64.T, x64.T @ g64, g64.sum(0))
    for name, grad, grad_ref, scale in zip(
      ("x", "kernel", "bias"), grads, grads_ref, scales, strict=True
    ):
      assert grad.dtype == grad_ref.dtype and grad.shape == grad_ref.shape, name
      error = np.linalg.norm(np.asarray(grad, np.float64) - np.asarray(grad_ref, np.float64))
      assert error <= 2 * tol * max(
        np.linalg.norm(np.asarray(grad_ref, np.float64)), np.linalg.norm(scale)
      ), name

  def test_without_bias(self):
    x, kernel, _, _ = _linear_operands((6, 10), 20, jnp.float32)
    y = self._linear_mish(x, kernel)
    np.testing.assert_allclose(
      y, linear_mish_kernels.linear_mish_reference(x, kernel), rtol=1e-6, atol=1e-6
    )

  def test_small_blocks_many_k_steps(self):
    x, kernel, bias, _ = _linear_operands((70, 300), 50, jnp.bfloat16)
    y = self._linear_mish(x, kernel, bias, block_m=64, block_n=16, block_k=32)
    assert _relative_error(y, linear_mish_kernels.linear_mish_reference(x, kernel, bias)) <= 1e-2

  def test_jit_and_vmap(self):
    x, kernel, bias, _ = _linear_operands((3, 4, 10), 20, jnp.float32)
    fused = jax.jit(self._linear_mish)
    reference = linear_mish_kernels.linear_mish_reference
    # Shared weights fold the batch into M; batched weights loop over the batch.
    np.testing.assert_allclose(
      jax.vmap(fused, (0, None, None))(x, kernel, bias),
      reference(x, kernel, bias),
      rtol=1e-5,
      atol=1e-6,
    )
    kernels = jnp.stack([kernel, -kernel, 2 * kernel])
    np.testing.assert_allclose(
      jax.vmap(fused, (0, 0, None))(x, kernels, bias),
      jax.vmap(reference, (0, 0, None))(x, kernels, bias),
      rtol=1e-5,
      atol=1e-6,
    )

    def loss(fn, x, kernel, bias):
      return jnp.sum(fn(x, kernel, bias) ** 2)

    grads = jax.vmap(jax.grad(lambda *a: loss(fused, *a), argnums=(0, 1, 2)), (0, None, None))(
      x, kernel, bias
    )
    grads_ref = jax.vmap(
      jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2)), (0, None, None)
    )(x, kernel, bias)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
      assert _relative_error(grad, grad_ref) <= 1e-5

  @pytest.mark.parametrize(
    "x_shape, kernel_shape, bias_shape, kwargs, error",
    [
      ((4, 3), (5, 2), (2,), {}, ValueError),
      ((4, 3), (3,), None, {}, ValueError),
      ((4, 3), (3, 2), (3,), {}, ValueError),
      ((4, 3), (3, 2), (2,), {"backend": "cuda"}, ValueError),
      ((4, 3), (3, 2), (2,), {"block_m": 32}, ValueError),  # wgmma: multiples of 64.
      ((4, 3), (3, 2), (2,), {"block_k": 512}, ValueError),
      ((4, 3), (3, 2), (2,), {"backend": "triton", "block_n": 24}, ValueError),
    ],
  )
  def test_bad_arguments(self, x_shape, kernel_shape, bias_shape, kwargs, error):
    bias = None if bias_shape is None else jnp.ones(bias_shape)
    with pytest.raises(error):
      self._linear_mish(jnp.ones(x_shape), jnp.ones(kernel_shape), bias, **kwargs)

  def test_bad_dtypes(self):
    with pytest.raises(TypeError):
      self._linear_mish(jnp.ones((2, 3), jnp.complex64), jnp.ones((3, 2), jnp.complex64))
    with pytest.raises(TypeError):
      self._linear_mish(jnp.ones((2, 3), jnp.int32), jnp.ones((3, 2), jnp.int32))

  def test_empty(self):
    assert self._linear_mish(jnp.ones((0, 3)), jnp.ones((3, 2))).shape == (0, 2)
    assert self._linear_mish(jnp.ones((4, 3)), jnp.ones((3, 0))).shape == (4, 0)
    np.testing.assert_allclose(  # K = 0: mish(bias).
      self._linear_mish(jnp.ones((2, 0)), jnp.ones((0, 3)), jnp.arange(3.0)),
      jnp.broadcast_to(activations.mish(jnp.arange(3.0)), (2, 3)),
      rtol=1e-6,
    )


class TestLinearMishKernelInterpret(LinearMishKernelTestBase):
  interpret = True


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="compiled Pallas kernels need a GPU")
class TestLinearMishKernelCompiled(LinearMishKernelTestBase):
  interpret = False
