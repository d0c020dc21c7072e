"""Tests of `mish_jax.mish`, its derivative and the activation registry.

References are independent of the code under test: float64 numpy (tanh of log1p(exp)), its
analytic derivative, finite differences (`check_grads`), `jax.nn` and, where installed, PyTorch.
"""

import flax.linen as linen
import hypothesis
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from hypothesis import strategies as st
from jax.test_util import check_grads

import mish_jax
from tests.kernel_testing import every_finite, mish64, mish_grad64

FLOAT_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32)


def float32_sweep(stride: int = 97) -> np.ndarray:
  """Finite float32 values spread evenly over every bit pattern (one in `stride`)."""
  values = np.arange(0, 2**32, stride, dtype=np.uint64).astype(np.uint32).view(np.float32)
  return values[np.isfinite(values)]


def ulps_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Distance in units in the last place between two arrays of one 16-bit float dtype."""

  def ordered(v):
    bits = v.view(np.uint16).astype(np.int64)
    return np.where(bits & 0x8000, 0x8000 - bits, bits)

  return np.abs(ordered(a) - ordered(b))


class TestAccuracy:
  def test_float32_relative_error_over_the_whole_range(self):
    x = float32_sweep()
    expected = mish64(x)
    actual = np.asarray(mish_jax.mish(x), np.float64)
    where = np.abs(expected) > 1e-30
    relative_error = np.abs(actual[where] - expected[where]) / np.abs(expected[where])
    assert relative_error.max() <= 6e-7, x[where][relative_error.argmax()]

  def test_float32_tiny_results_down_to_where_e_to_the_x_leaves_the_normal_range(self):
    # Below the sweep's 1e-30 bar: e^x is a normal float32 down to -87.3 (CPUs flush what is
    # below), and the exp's scale 2^k is built from exponent bits, exactly 0 from -88 on.
    x = np.linspace(-87.3, -70, 100_001, dtype=np.float32)
    expected = mish64(x)
    relative_error = np.abs(np.asarray(mish_jax.mish(x), np.float64) - expected) / -expected
    assert relative_error.max() <= 6e-7, x[relative_error.argmax()]
    far_below = np.array([-88, -88.5, -150, -1e30, -np.finfo(np.float32).max], np.float32)
    np.testing.assert_array_equal(np.asarray(mish_jax.mish(far_below)).view(np.uint32), 2**31)

  @pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16], ids=["bfloat16", "float16"])
  def test_float64_reference_rounds_once_correctly_for_every_input(self, dtype):
    # The premise of the exhaustive tests: numpy's float64 mish is within ~1e-15 of the true
    # value, so wherever it lies more than 1e-12 from a 16-bit rounding midpoint, rounding it once
    # gives the correctly rounded result. Nudged by 1e-12 either way, no result may round
    # differently.
    y = mish64(every_finite(dtype).astype(np.float64))
    with np.errstate(over="ignore"):
      rounded = [(y * (1 + s * 1e-12)).astype(dtype) for s in (-1, 0, 1)]
    np.testing.assert_array_equal(rounded[0], rounded[1])
    np.testing.assert_array_equal(rounded[2], rounded[1])

  @pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16], ids=["bfloat16", "float16"])
  def test_half_precision_correctly_rounded_for_every_input(self, dtype):
    # Exhaustive: float64, rounded once, is the correctly rounded result for every 16-bit input
    # (no float64 mish lies within float64's error of a midpoint between 16-bit values).
    x = every_finite(dtype)
    correctly_rounded = mish64(x.astype(np.float64)).astype(dtype)
    actual = np.asarray(mish_jax.mish(x))
    assert actual.dtype == dtype
    distance = ulps_between(actual, correctly_rounded)
    assert distance.max() == 0, (x[distance > 0], actual[distance > 0])

  def test_float16_hard_cases_that_float32_rounds_the_wrong_way(self):
    # Each mish lies within float32's error of a midpoint between two float16 values.
    x = np.array([1.5712890625, 0.0006103515625, -0.0006103515625], np.float16)
    expected = np.array([1.4814453125, 0.0003662109375, -0.00036597251892089844], np.float16)
    np.testing.assert_array_equal(mish_jax.mish(x), expected)

  @pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16], ids=["bfloat16", "float16"])
  def test_pallas_half_precision_rounding_for_every_input(self, dtype):
    # What the README claims for the kernels (here in interpret mode), checked exhaustively: every
    # input correctly rounded, as on the XLA path (bfloat16 subnormals and tiny results too).
    x = every_finite(dtype)
    correctly_rounded = mish64(x.astype(np.float64)).astype(dtype)
    actual = np.asarray(mish_jax.mish(x, implementation="pallas"))
    assert actual.dtype == dtype
    distance = ulps_between(actual, correctly_rounded)
    assert distance.max() == 0, (x[distance > 0], actual[distance > 0])

  def test_float32_gradient_absolute_error(self):
    x = np.linspace(-40, 40, 1_000_001, dtype=np.float32)
    actual = np.asarray(jax.vmap(jax.grad(mish_jax.mish))(x), np.float64)
    assert np.abs(actual - mish_grad64(x)).max() <= 5e-7

  def test_mish_grad_matches_autodiff_of_mish(self):
    x = np.random.default_rng(0).normal(0, 5, 1000).astype(np.float32)
    np.testing.assert_array_equal(mish_jax.mish_grad(x), jax.vmap(jax.grad(mish_jax.mish))(x))

  def test_float64_in_x64_mode(self):
    with jax.enable_x64(True):
      x = np.concatenate(
        [np.linspace(-800, 60, 100_001), np.random.default_rng(1).normal(0, 3, 10_000)]
      )
      actual = np.asarray(mish_jax.mish(x))
      assert actual.dtype == np.float64
      expected = mish64(x)
      where = np.abs(expected) > 1e-300
      np.testing.assert_allclose(actual[where], expected[where], rtol=4e-16 * 8, atol=0)
      np.testing.assert_allclose(
        jax.vmap(jax.grad(mish_jax.mish))(x[np.abs(x) < 40]),
        mish_grad64(x[np.abs(x) < 40]),
        rtol=0,
        atol=1e-15,
      )

  def test_agrees_with_torch_in_float64(self):
    torch = pytest.importorskip("torch")
    x = np.concatenate([np.linspace(-50, 50, 20_001), np.random.default_rng(2).normal(0, 4, 5_000)])
    x_torch = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y_torch = torch.nn.functional.mish(x_torch)
    (grad_torch,) = torch.autograd.grad(y_torch.sum(), x_torch)
    with jax.enable_x64(True):
      y = np.asarray(mish_jax.mish(x))
      grad = np.asarray(jax.vmap(jax.grad(mish_jax.mish))(x))
    np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, grad_torch.numpy(), rtol=1e-12, atol=1e-12)


class TestLimits:
  @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
  def test_values_at_the_limits(self, dtype):
    x = jnp.array([jnp.inf, -jnp.inf, jnp.nan, 0.0], dtype)
    y = np.asarray(mish_jax.mish(x), np.float32)
    assert y[0] == np.inf and y[1] == 0 and np.isnan(y[2]) and y[3] == 0

  @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
  def test_derivatives_at_the_limits(self, dtype):
    x = jnp.array([jnp.inf, -jnp.inf, 0.0, jnp.nan], dtype)
    grad = np.asarray(jax.vmap(jax.grad(mish_jax.mish))(x), np.float32)
    np.testing.assert_array_equal(grad[:3], np.array([1.0, 0.0, 0.6], np.float32).astype(dtype))
    assert np.isnan(grad[3])
    assert mish_jax.mish_grad(0.0) == np.float32(0.6)

  @pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float16], ids=["bfloat16", "float16"])
  def test_no_inf_or_nan_from_any_finite_half_input(self, dtype):
    x = every_finite(dtype)
    y, grad = np.asarray(mish_jax.mish(x)), np.asarray(jax.vmap(jax.grad(mish_jax.mish))(x))
    assert np.isfinite(y.astype(np.float32)).all() and np.isfinite(grad.astype(np.float32)).all()

  def test_no_inf_or_nan_from_any_finite_float32_input(self):
    x = float32_sweep(stride=1021)
    x = np.concatenate([x, [np.finfo(np.float32).max, -np.finfo(np.float32).max, 1e-45, -1e-45]])
    assert np.isfinite(mish_jax.mish(x)).all()
    assert np.isfinite(jax.vmap(jax.grad(mish_jax.mish))(x.astype(np.float32))).all()
    assert np.isfinite(jax.vmap(jax.hessian(mish_jax.mish))(x.astype(np.float32))).all()

  def test_no_overflow_at_large_inputs(self):
    big = np.float32(3e38)
    assert mish_jax.mish(big) == big and mish_jax.mish(-big) == 0
    assert jax.grad(mish_jax.mish)(big) == 1 and jax.grad(mish_jax.mish)(-big) == 0


class TestDerivatives:
  def test_check_grads_to_order_2_at_random_points(self):
    with jax.enable_x64(True):
      x = np.random.default_rng(3).normal(0, 3, 16)
      check_grads(mish_jax.mish, (x,), order=2, modes=["fwd", "rev"])

  def test_check_grads_to_order_4_at_a_small_point(self):
    with jax.enable_x64(True):
      # One mode at a time: together they also check every mixed order, 6x slower.
      for mode in ("fwd", "rev"):
        check_grads(mish_jax.mish, (np.array([0.35]),), order=4, modes=[mode])

  def test_hessian_matches_finite_differences_of_the_gradient(self):
    x = np.linspace(-8, 8, 33)
    with jax.enable_x64(True):
      second = jax.vmap(jax.hessian(mish_jax.mish))(x)
    eps = 1e-5
    expected = (mish_grad64(x + eps) - mish_grad64(x - eps)) / (2 * eps)
    np.testing.assert_allclose(second, expected, atol=1e-7)

  def test_composes_with_jit_vmap_grad(self):
    x = jnp.linspace(-5, 5, 12).reshape(3, 4)

    def loss(v):
      return jnp.sum(mish_jax.mish(v) ** 2)

    grads = jax.jit(jax.vmap(jax.grad(loss)))(x)
    expected = 2 * mish64(x) * mish_grad64(x)
    np.testing.assert_allclose(grads, expected, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(
      jax.jacfwd(mish_jax.mish)(x[0]), np.diag(mish_grad64(x[0])), rtol=2e-6, atol=1e-7
    )


class TestInputs:
  @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
  @pytest.mark.parametrize("shape", [(), (1,), (127,), (3, 5, 7), (2, 3, 4, 5)])
  def test_shape_and_dtype_preserved(self, dtype, shape):
    x = jax.random.normal(jax.random.key(0), shape, dtype) * 5
    y = mish_jax.mish(x)
    assert y.shape == shape and y.dtype == dtype
    grad = jax.grad(lambda v: jnp.sum(mish_jax.mish(v)).astype(jnp.float32))(x)
    assert grad.dtype == dtype

  def test_python_scalars_and_integers_promote_like_jax_nn(self):
    assert mish_jax.mish(1.0).dtype == jax.nn.mish(1.0).dtype
    ints = jnp.arange(-3, 4, dtype=jnp.int32)
    assert mish_jax.mish(ints).dtype == jax.nn.mish(ints).dtype
    np.testing.assert_allclose(mish_jax.mish(ints), mish64(np.arange(-3, 4)), rtol=1e-6)
    np.testing.assert_allclose(mish_jax.mish(2), mish64(2.0), rtol=1e-6)

  def test_complex_input_raises_type_error(self):
    with pytest.raises(TypeError, match="real inputs"):
      mish_jax.mish(jnp.ones(3, jnp.complex64))

  @pytest.mark.parametrize("bad", ["cuda", "Pallas", 3])
  def test_unknown_implementation_raises(self, bad):
    with pytest.raises(ValueError, match="implementation must be None, 'xla' or 'pallas'"):
      mish_jax.mish(jnp.ones(3), implementation=bad)


_FLOAT_DTYPE_STRATEGY = st.sampled_from([np.float16, ml_dtypes.bfloat16, np.float32])
_ATOL = {
  np.dtype(np.float16): 1e-7,
  np.dtype(ml_dtypes.bfloat16): 1e-38,
  np.dtype(np.float32): 1e-30,
}
_RTOL = {
  np.dtype(np.float16): 2**-11,
  np.dtype(ml_dtypes.bfloat16): 2**-8,
  np.dtype(np.float32): 6e-7,
}


@st.composite
def finite_arrays(draw):
  dtype = np.dtype(draw(_FLOAT_DTYPE_STRATEGY))
  shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=9))
  elements = st.floats(
    allow_nan=False, allow_infinity=False, width=32 if dtype == np.float32 else 16
  ).map(lambda v: np.array(v, np.float32).astype(dtype).item())
  values = draw(hnp.arrays(np.float32, shape, elements=elements.filter(np.isfinite)))
  return values.astype(dtype)


class TestProperties:
  @hypothesis.settings(max_examples=150, deadline=None)
  @hypothesis.given(finite_arrays())
  def test_finite_inputs_give_accurate_finite_values_and_gradients(self, x):
    y = np.asarray(mish_jax.mish(x))
    assert y.dtype == x.dtype and y.shape == x.shape
    y64 = y.astype(np.float64)
    expected = mish64(x.astype(np.float64))
    np.testing.assert_allclose(y64, expected, rtol=_RTOL[x.dtype], atol=_ATOL[x.dtype])
    assert (y64 >= -0.3088406).all() and (y64 <= np.maximum(x.astype(np.float64), 0)).all()
    grad = np.asarray(jax.grad(lambda v: jnp.sum(mish_jax.mish(v)).astype(jnp.float32))(x))
    assert np.isfinite(grad.astype(np.float32)).all()

  @hypothesis.settings(max_examples=50, deadline=None)
  @hypothesis.given(st.floats(-1e4, 1e4))
  def test_gradient_is_bounded_and_matches_reference(self, value):
    grad = float(jax.grad(mish_jax.mish)(np.float32(value)))
    assert -0.11 < grad < 1.11
    assert abs(grad - mish_grad64(np.float32(value))) <= 5e-7


class TestActivationFamily:
  def test_registry_lists_the_family(self):
    assert set(mish_jax.ACTIVATIONS) >= {"relu", "swish", "mish", "gelu", "jax_mish", "mish_pallas"}

  @pytest.mark.parametrize("name", ["relu", "swish", "mish", "gelu", "jax_mish"])
  def test_each_activation_matches_its_definition(self, name):
    x = np.linspace(-6, 6, 101).astype(np.float32)
    x64 = x.astype(np.float64)
    expected = {
      "relu": np.maximum(x64, 0),
      "swish": x64 / (1 + np.exp(-x64)),
      "mish": mish64(x64),
      "jax_mish": mish64(x64),
      "gelu": np.asarray(jax.nn.gelu(x, approximate=False), np.float64),
    }[name]
    np.testing.assert_allclose(mish_jax.get_activation(name)(x), expected, rtol=2e-6, atol=1e-6)

  def test_swish_beta(self):
    x = np.linspace(-6, 6, 13).astype(np.float32)
    swish_beta = mish_jax.get_activation("swish", beta=1.7)
    np.testing.assert_allclose(swish_beta(x), x / (1 + np.exp(-1.7 * x)), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(mish_jax.swish(x), jax.nn.silu(x), rtol=1e-6)

  @pytest.mark.parametrize(
    "name, kwargs, accepted",
    [
      ("relu", {"beta": 2}, "none besides x"),
      ("swish", {"gamma": 2}, "beta"),
      ("gelu", {"beta": 2}, "approximate"),
      ("mish", {"beta": 2}, "implementation"),
      ("mish_pallas", {"beta": 2}, "none besides x"),
    ],
  )
  def test_unknown_arguments_raise_at_once_naming_the_accepted_ones(self, name, kwargs, accepted):
    with pytest.raises(TypeError, match=f"{name}' takes no argument '.*'; it accepts {accepted}"):
      mish_jax.get_activation(name, **kwargs)

  def test_mish_pallas_refuses_another_implementation(self):
    with pytest.raises(ValueError, match="'mish_pallas' is mish with implementation='pallas'"):
      mish_jax.get_activation("mish_pallas", implementation="xla")
    with pytest.raises(ValueError, match="implementation must be None, 'xla' or 'pallas'"):
      mish_jax.get_activation("mish", implementation="cuda")
    mish_xla = mish_jax.get_activation("mish", implementation="xla")
    assert mish_xla(1.0) == mish_jax.mish(1.0)

  def test_unknown_name_lists_the_valid_ones(self):
    with pytest.raises(
      ValueError, match="unknown activation 'mihs'; valid names: relu, swish, mish"
    ):
      mish_jax.get_activation("mihs")

  @pytest.mark.parametrize("name", ["relu", "swish", "mish", "gelu", "jax_mish"])
  def test_works_in_flax_nnx_and_linen(self, name):
    activation = mish_jax.get_activation(name)
    x = jnp.ones((2, 3))

    class NnxModel(nnx.Module):
      def __init__(self, rngs):
        self.dense = nnx.Linear(3, 4, rngs=rngs)

      def __call__(self, v):
        return activation(self.dense(v))

    model = NnxModel(nnx.Rngs(0))
    grads = nnx.grad(lambda m: jnp.sum(m(x)))(model)
    assert model(x).shape == (2, 4) and jnp.isfinite(grads.dense.kernel[...]).all()

    class LinenModel(linen.Module):
      @linen.compact
      def __call__(self, v):
        return activation(linen.Dense(4)(v))

    params = LinenModel().init(jax.random.key(0), x)
    y = LinenModel().apply(params, x)
    assert y.shape == (2, 4) and jnp.isfinite(y).all()
