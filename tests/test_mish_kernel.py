"""Tests of the elementwise Pallas Mish kernels, `mish_jax.kernels.mish`.

The base class holds the tests; its `Interpret` subclass runs them in Pallas interpret mode (CI,
on CPU), its `Compiled` subclass compiles them and runs only where JAX has a GPU.

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
from mish_jax.kernels import mish as mish_kernels

from mish_jax._src import activations
from tests.kernel_testing import (
  DTYPES,
  assert_ulp_close,
  mish64,
  mish_grad64,
  random_array,
)


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
    x = random_array(shape, dtype)
    g = random_array(shape, dtype, seed=1, scale=1.0)
    size = int(np.prod(shape))
    y, vjp = jax.vjp(lambda v: self._mish(v, block_size=self._block_size(size)), x)
    (dx,) = vjp(g)
    assert y.shape == dx.shape == shape and y.dtype == dx.dtype == dtype
    # Fully written: interpret mode starts every output as NaN.
    assert not np.isnan(np.asarray(y, np.float32)).any()
    assert not np.isnan(np.asarray(dx, np.float32)).any()

    max_ulp = 2 if dtype == jnp.float32 else 1
    assert_ulp_close(y, activations.mish(x, implementation="xla"), max_ulp, "vs XLA mish")
    x32 = x.astype(jnp.float32)
    dx_xla = (activations.mish_grad(x32) * g.astype(jnp.float32)).astype(dtype)
    assert_ulp_close(dx, dx_xla, max_ulp, "gradient vs XLA mish_grad")

    # float64: correctly rounded to 16 bits, or 4 ulp of float32 (the XLA version's own error).
    x64 = np.asarray(x, np.float64)
    assert_ulp_close(y, mish64(x64).astype(dtype), 4 if dtype == jnp.float32 else 1, "vs float64")
    tol = {jnp.float32: 2e-6, jnp.bfloat16: 1e-2, jnp.float16: 2e-3}[dtype]
    np.testing.assert_allclose(
      np.asarray(dx, np.float64),
      mish_grad64(x64) * np.asarray(g, np.float64),
      rtol=tol,
      atol=tol,
    )

  def test_matches_jax_nn_mish(self):
    x = random_array((1000,), jnp.float32)
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
    assert_ulp_close(y, activations.mish(x, implementation="xla"), 2, "value")
    assert_ulp_close(dx, activations.mish_grad(x), 2, "derivative")
    # The limits, exactly: mish(-inf) = 0, mish(inf) = inf, mish'(-inf) = 0, mish'(inf) = 1.
    np.testing.assert_array_equal(y[[0, -4, -3, -2]], np.float32([0.0, 100.0, 3e38, np.inf]))
    np.testing.assert_array_equal(dx[[0, 1, -4, -3, -2]], np.float32([0.0, 0.0, 1.0, 1.0, 1.0]))
    assert np.isnan(y[-1]) and np.isnan(dx[-1])

  def test_jit_vmap_grad(self):
    x = random_array((3, 50), jnp.float32)

    @jax.jit
    def per_row_grads(x):
      return jax.vmap(jax.grad(lambda row: jnp.sum(self._mish(row) ** 2)))(x)

    y = activations.mish(x, implementation="xla")
    expected = 2 * y * activations.mish_grad(x)
    np.testing.assert_allclose(per_row_grads(x), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(jax.vmap(self._mish)(x), self._mish(x))

  @pytest.mark.parametrize("block_size", [128, 256, 4096])
  def test_block_size_does_not_change_the_result(self, block_size):
    x = random_array((3, 333), jnp.bfloat16)
    np.testing.assert_array_equal(self._mish(x, block_size=block_size), self._mish(x))

  def test_triton_backend(self):
    if not self.interpret and jax.default_backend() != "gpu":
      pytest.skip("Triton compiles only on GPU")
    x = random_array((1000,), jnp.float32)
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
    x = random_array((100,), jnp.float32)
    np.testing.assert_array_equal(self._mish(x, block_size=2**17), self._mish(x))
    with pytest.raises(ValueError, match="at most"):
      mish_kernels.mish(x, block_size=2**17, interpret=False)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="compiled Pallas kernels need a GPU")
class TestMishKernelCompiled(MishKernelTestBase):
  interpret = False
