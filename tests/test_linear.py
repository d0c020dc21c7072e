"""Tests of `linear_mish` and `MishLinear`, once per implementation.

`LinearMishTestBase` holds the tests; each subclass picks an implementation. On CPU, "pallas"
runs the fused kernel in interpret mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from mish_jax._src import activations, dispatch
from mish_jax._src.linear import MishLinear, linear_mish
from tests.kernel_testing import cuda_module_text


def _reference(x, kernel, bias=None):
  """The unfused composition, float32-accumulated, in the operands' dtype."""
  z = jnp.matmul(x, kernel, preferred_element_type=jnp.float32)
  if bias is not None:
    z = z + bias.astype(jnp.float32)
  return activations.mish(z, implementation="xla").astype(jnp.result_type(x, kernel))


def _operands(x_shape, n, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  k = x_shape[-1]
  x = jax.random.normal(keys[0], x_shape).astype(dtype)
  kernel = (jax.random.normal(keys[1], (k, n)) / np.sqrt(k)).astype(dtype)
  bias = jax.random.normal(keys[2], (n,)).astype(dtype)
  return x, kernel, bias


def _assert_close(actual, expected, dtype):
  tol = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}[dtype]
  np.testing.assert_allclose(
    np.asarray(actual, np.float32), np.asarray(expected, np.float32), rtol=tol, atol=tol
  )


class LinearMishTestBase:
  """`linear_mish` and `MishLinear` with one implementation."""

  implementation: str

  def _linear_mish(self, *args):
    return linear_mish(*args, implementation=self.implementation)

  @pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
  @pytest.mark.parametrize("x_shape, n", [((7,), 5), ((9, 20), 33), ((2, 3, 16), 8)], ids=str)
  def test_matches_unfused_composition(self, x_shape, n, dtype):
    x, kernel, bias = _operands(x_shape, n, dtype)
    y = self._linear_mish(x, kernel, bias)
    assert y.shape == (*x_shape[:-1], n) and y.dtype == dtype
    _assert_close(y, _reference(x, kernel, bias), dtype)
    _assert_close(self._linear_mish(x, kernel), _reference(x, kernel), dtype)

  def test_gradients(self):
    x, kernel, bias = _operands((2, 6, 20), 24)

    def loss(fn, x, kernel, bias):
      return jnp.sum(jnp.sin(fn(x, kernel, bias)))

    grads = jax.jit(jax.grad(lambda *a: loss(self._linear_mish, *a), argnums=(0, 1, 2)))(
      x, kernel, bias
    )
    expected = jax.grad(lambda *a: loss(_reference, *a), argnums=(0, 1, 2))(x, kernel, bias)
    for grad, grad_expected in zip(grads, expected, strict=True):
      np.testing.assert_allclose(grad, grad_expected, rtol=1e-5, atol=1e-5)

  def test_vmap(self):
    x, kernel, bias = _operands((4, 3, 10), 6)
    np.testing.assert_allclose(
      jax.vmap(self._linear_mish, (0, None, None))(x, kernel, bias),
      _reference(x, kernel, bias),
      rtol=1e-5,
      atol=1e-6,
    )

  def test_integer_inputs_promote_to_float(self):
    y = self._linear_mish(jnp.ones((2, 3), jnp.int32), jnp.ones((3, 4), jnp.int32))
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, activations.mish(jnp.full((2, 4), 3.0)), rtol=1e-6)

  @pytest.mark.parametrize(
    "x_shape, kernel_shape, bias_shape, message",
    [
      ((4, 3), (5, 2), (2,), r"x's last dimension \(3\) must equal kernel's in_features \(5\)"),
      ((4, 3), (3,), None, "kernel must have shape"),
      ((4, 3), (3, 2, 1), None, "kernel must have shape"),
      ((), (3, 2), None, "at least one dimension"),
      ((4, 3), (3, 2), (3,), r"bias must have shape \(out_features,\) = \(2,\)"),
      ((4, 3), (3, 2), (1, 2), "bias must have shape"),
    ],
  )
  def test_bad_shapes(self, x_shape, kernel_shape, bias_shape, message):
    bias = None if bias_shape is None else jnp.ones(bias_shape)
    with pytest.raises(ValueError, match=message):
      self._linear_mish(jnp.ones(x_shape), jnp.ones(kernel_shape), bias)

  def test_complex_inputs(self):
    with pytest.raises(TypeError, match="real inputs only, got kernel"):
      self._linear_mish(jnp.ones((2, 3)), jnp.ones((3, 2), jnp.complex64))

  def test_mish_linear_is_nnx_linear_then_mish(self):
    layer = MishLinear(5, 7, rngs=nnx.Rngs(0), implementation=self.implementation)
    linear = nnx.Linear(5, 7, rngs=nnx.Rngs(0))
    # Same initializers and random streams: the same weights.
    np.testing.assert_array_equal(layer.kernel[...], linear.kernel[...])
    np.testing.assert_array_equal(layer.bias[...], linear.bias[...])
    x = jax.random.normal(jax.random.key(1), (3, 2, 5))
    np.testing.assert_allclose(
      layer(x), activations.mish(linear(x), implementation="xla"), rtol=1e-5, atol=1e-6
    )
    # Same parameter names: weights copy across.
    other = nnx.Linear(5, 7, rngs=nnx.Rngs(2))
    nnx.update(layer, nnx.state(other, nnx.Param))
    np.testing.assert_allclose(
      layer(x), activations.mish(other(x), implementation="xla"), rtol=1e-5, atol=1e-6
    )

  def test_mish_linear_options(self):
    layer = MishLinear(
      4,
      3,
      use_bias=False,
      dtype=jnp.bfloat16,
      rngs=nnx.Rngs(0),
      implementation=self.implementation,
    )
    assert layer.bias is None and layer.kernel[...].dtype == jnp.float32
    x = jnp.ones((2, 4), jnp.float32)
    y = layer(x)
    assert y.dtype == jnp.bfloat16 and y.shape == (2, 3)
    _assert_close(
      y, _reference(x.astype(jnp.bfloat16), layer.kernel[...].astype(jnp.bfloat16)), jnp.bfloat16
    )

  def test_training_step_decreases_loss(self):
    class Model(nnx.Module):
      def __init__(self, implementation, rngs):
        self.hidden = MishLinear(4, 32, rngs=rngs, implementation=implementation)
        self.out = nnx.Linear(32, 1, rngs=rngs)

      def __call__(self, x):
        return self.out(self.hidden(x))

    x = jax.random.normal(jax.random.key(0), (64, 4))
    y = jnp.sin(x.sum(axis=1, keepdims=True))
    model = Model(self.implementation, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
      def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

      loss, grads = nnx.value_and_grad(loss_fn)(model)
      optimizer.update(model, grads)
      return loss

    losses = [float(train_step(model, optimizer, x, y)) for _ in range(30)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses

  def test_float32_bias_with_bfloat16_operands(self):
    """jnp's dtype, float32; the Pallas path keeps the matmul in bfloat16 (below)."""
    x, kernel, bias = _operands((9, 20), 33, jnp.bfloat16)
    bias = bias.astype(jnp.float32) + 0.1
    y = self._linear_mish(x, kernel, bias)
    assert y.dtype == jax.nn.mish(x @ kernel + bias).dtype == jnp.float32
    expected = activations.mish(
      jnp.matmul(x, kernel, preferred_element_type=jnp.float32) + bias, implementation="xla"
    )
    _assert_close(y, expected, jnp.bfloat16)


class TestLinearMishXla(LinearMishTestBase):
  implementation = "xla"


class TestLinearMishPallas(LinearMishTestBase):
  implementation = "pallas"


@pytest.mark.parametrize(
  "implementation, uses_kernel", [(None, False), ("xla", False), ("pallas", True)]
)
def test_dispatch(implementation, uses_kernel):
  x, kernel, bias = _operands((3, 4), 5)
  fn = functools.partial(linear_mish, implementation=implementation)
  jaxpr = str(jax.make_jaxpr(fn)(x, kernel, bias))
  # The Pallas path's rule around its kernel (interpreted here, behind a pure callback).
  assert ("_linear_mish_jvp" in jaxpr) == uses_kernel
  assert ("pure_callback" in jaxpr) == uses_kernel


def test_pallas_matmul_runs_in_the_dtype_of_x_and_kernel(monkeypatch):
  """A float32 bias with bfloat16 x and kernel reaches the bfloat16 kernel, lowered for CUDA."""
  jax.clear_caches()
  monkeypatch.setattr(dispatch, "pallas_compiles", lambda device=None: True)
  try:
    x, kernel = jnp.zeros((256, 128), jnp.bfloat16), jnp.zeros((128, 64), jnp.bfloat16)
    fn = functools.partial(linear_mish, implementation="pallas")
    text = cuda_module_text(fn, x, kernel, jnp.zeros(64, jnp.float32))
  finally:
    jax.clear_caches()
  kernel_call = "(tensor<256x128xbf16>, tensor<128x64xbf16>, tensor<64xf32>) -> tensor<256x64xf32>"
  assert kernel_call in text


def test_unknown_implementation():
  with pytest.raises(ValueError, match="implementation must be"):
    linear_mish(jnp.ones((2, 3)), jnp.ones((3, 2)), implementation="cuda")
  with pytest.raises(ValueError, match="implementation must be"):
    MishLinear(3, 2, rngs=nnx.Rngs(0), implementation="cuda")


@pytest.mark.parametrize("features", [(0, 4), (4, 0), (-1, 4), (2.5, 4), (True, 4)], ids=str)
def test_mish_linear_refuses_feature_counts_that_are_not_positive_integers(features):
  # nnx.Linear(0, 4) fails in its initializer with a ZeroDivisionError.
  with pytest.raises(ValueError, match="_features must be a positive integer"):
    MishLinear(*features, rngs=nnx.Rngs(0))
  assert MishLinear(np.int64(2), 3, rngs=nnx.Rngs(0))(jnp.ones((1, 2))).shape == (1, 3)


def test_pallas_takes_the_xla_path_for_float64():
  with jax.enable_x64(True):
    x = jnp.linspace(-2.0, 2.0, 6).reshape(2, 3)
    expected = linear_mish(x, x.T, implementation="xla")
    assert expected.dtype == jnp.float64
    np.testing.assert_array_equal(linear_mish(x, x.T, implementation="pallas"), expected)
    # A float64 bias makes the result float64 too, with 16-bit x and kernel.
    half = x.astype(jnp.bfloat16)
    mixed = linear_mish(half, half.T, jnp.ones(2), implementation="pallas")
    assert mixed.dtype == jnp.float64
