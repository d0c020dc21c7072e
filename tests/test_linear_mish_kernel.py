"""Tests of the fused Pallas kernel `mish_jax.kernels.linear_mish`.

The base class holds the tests; its `Interpret` subclass runs them in Pallas interpret mode (CI,
on CPU), its `Compiled` subclass compiles them and runs only where JAX has a GPU. References: the
unfused float32-accumulated jnp composition.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mish_jax.kernels import linear_mish as linear_mish_kernels

from mish_jax._src import activations


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
