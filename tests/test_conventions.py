"""`mish_jax` follows `jax.nn`'s conventions: result dtypes, weak types and errors.

The reference is `jax.nn` itself (`jax.nn.mish`, `jax.nn.silu`, the composition for
`linear_mish`), for every kind of input, with x64 off and on, and for both implementations. The
Pallas kernels have no float64: where `jax.nn` gives float64, the Pallas path takes the XLA path,
with the same result type.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import mish_jax

IMPLEMENTATIONS = ("xla", "pallas")
ARRAY_DTYPES = (
  "bool",
  "int8",
  "int16",
  "int32",
  "int64",
  "uint8",
  "uint16",
  "uint32",
  "uint64",
  "float16",
  "bfloat16",
  "float32",
  "float64",
)


def _inputs() -> dict[str, object]:
  """One of every input kind; built inside the x64 mode under test, as a user's would be."""
  inputs: dict[str, object] = {
    "python float": 0.75,
    "python int": 2,
    "python bool": True,
    "numpy float32": np.float32(-1.5),
    "numpy float64": np.float64(0.25),
    "numpy int8": np.int8(-3),
    "numpy bool": np.bool_(True),
    "numpy bfloat16": ml_dtypes.bfloat16(1.25),
    "weak float array": jnp.asarray(-0.5),
    "weak int array": jnp.asarray(3),
    "numpy float64 array": np.linspace(-3, 3, 5),
  }
  for name in ARRAY_DTYPES:
    dtype = jnp.dtype(name)
    if dtype.itemsize == 8 and not jax.config.jax_enable_x64:
      continue  # Not an array dtype without x64: jnp would truncate it, with a warning.
    values = np.array([-2, 0, 1, 3, 1]) if dtype != jnp.bool_ else np.array([True, False, True])
    inputs[f"{name} array"] = jnp.asarray(values, dtype)
  return inputs


def _result_type(fn, *args) -> tuple[jnp.dtype, bool]:
  """The dtype and weak type of `fn(*args)`, traced only (values are tested elsewhere)."""
  result = jax.eval_shape(fn, *args)
  return result.dtype, result.weak_type


def _assert_same_type(implementation, expected, call):
  """`call()` has the `(dtype, weak_type)` `expected`, on either implementation."""
  assert _result_type(call) == expected, implementation


x64_modes = pytest.mark.parametrize("x64", [False, True], ids=["x32", "x64"])
implementations_and_x64_modes = pytest.mark.parametrize(
  "implementation, x64",
  [
    ("xla", False),
    ("xla", True),
    ("pallas", False),
    ("pallas", True),
  ],
  ids=["xla-x32", "xla-x64", "pallas-x32", "pallas-x64"],
)


@implementations_and_x64_modes
def test_mish_result_type_is_jax_nn_mish_s(x64, implementation):
  with jax.enable_x64(x64):
    for name, x in _inputs().items():
      expected = _result_type(jax.nn.mish, x)
      call = functools.partial(mish_jax.mish, x, implementation=implementation)
      try:
        _assert_same_type(implementation, expected, call)
      except AssertionError as e:
        raise AssertionError(f"{name}: {e}") from e


@x64_modes
def test_mish_grad_and_swish_result_types(x64):
  with jax.enable_x64(x64):
    for name, x in _inputs().items():
      expected = _result_type(jax.nn.mish, x)
      assert _result_type(mish_jax.mish_grad, x) == expected, name
      assert _result_type(mish_jax.swish, x) == expected, name
      assert _result_type(mish_jax.swish, x, 1.5) == expected, name
      if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
        assert _result_type(jax.nn.silu, x) == expected, name
      else:  # jax.nn.silu refuses integers and bools; swish promotes them as jax.nn.mish does.
        with pytest.raises(TypeError):
          jax.nn.silu(x)


@implementations_and_x64_modes
def test_gradient_types_are_jax_nn_mish_s(x64, implementation):
  ours = functools.partial(mish_jax.mish, implementation=implementation)
  with jax.enable_x64(x64):
    for name, x in _inputs().items():
      if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating):
        continue  # Not differentiable, for jax.nn.mish as for mish_jax.
      expected_grad = _result_type(jax.grad(lambda v: jax.nn.mish(v).sum()), x)
      expected_tangent = _result_type(lambda v: jax.jvp(jax.nn.mish, (v,), (v,))[1], x)
      if implementation == "pallas" and expected_grad[0] == jnp.float64:
        continue  # Refused, as test_mish_result_type_is_jax_nn_mish_s checks.
      assert _result_type(jax.grad(lambda v: ours(v).sum()), x) == expected_grad, name
      assert _result_type(lambda v: jax.jvp(ours, (v,), (v,))[1], x) == expected_tangent, name


def test_a_weak_result_keeps_the_other_operand_s_dtype():
  # Computed, not only traced: the weak type survives to the result.
  x = jnp.ones(3, jnp.bfloat16)
  for implementation in IMPLEMENTATIONS:
    assert (mish_jax.mish(0.5, implementation=implementation) * x).dtype == jnp.bfloat16
  assert (mish_jax.mish_grad(0.5) * x).dtype == jnp.bfloat16
  assert (jax.grad(mish_jax.mish)(0.5) * x).dtype == jnp.bfloat16


@x64_modes
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_linear_mish_result_type_is_that_of_the_jax_nn_composition(x64, implementation):
  def reference(x, kernel, bias):
    return jax.nn.mish(x @ kernel + bias)

  with jax.enable_x64(x64):
    for name in ARRAY_DTYPES:
      dtype = jnp.dtype(name)
      if dtype.itemsize == 8 and not x64:
        continue
      x = jnp.asarray(np.arange(6).reshape(2, 3) % 2, dtype)
      kernel, bias = jnp.ones((3, 4), dtype), jnp.ones(4, dtype)
      expected = _result_type(reference, x, kernel, bias)
      call = functools.partial(mish_jax.linear_mish, x, kernel, bias, implementation=implementation)
      _assert_same_type(implementation, expected, call)
    # A strong float32 kernel decides the dtype of integer and bfloat16 inputs, as in jnp.
    x = jnp.ones((2, 3), jnp.bfloat16)
    kernel = jnp.ones((3, 4), jnp.float32)
    assert _result_type(mish_jax.linear_mish, x, kernel, None) == (jnp.float32, False)


_NOT_ARRAYS = {"list": [0.5, 1.0], "tuple": (0.5,), "None": None, "str": "0.5", "dict": {}}


@pytest.mark.parametrize("value", list(_NOT_ARRAYS.values()), ids=list(_NOT_ARRAYS))
def test_non_arrays_raise_type_error_as_in_jax_nn(value):
  with pytest.raises(TypeError):
    jax.nn.mish(value)
  for implementation in IMPLEMENTATIONS:
    with pytest.raises(TypeError):
      mish_jax.mish(value, implementation=implementation)
  with pytest.raises(TypeError):
    mish_jax.mish_grad(value)
  with pytest.raises(TypeError):
    mish_jax.swish(value)
  with pytest.raises(TypeError):
    mish_jax.linear_mish(value, jnp.ones((2, 2)))
  with pytest.raises(TypeError):
    mish_jax.linear_mish(jnp.ones((2, 2)), value)


def test_non_array_beta_raises_type_error():
  with pytest.raises(TypeError, match="swish requires ndarray or scalar arguments"):
    mish_jax.swish(jnp.ones(2), [1.0, 2.0])


@pytest.mark.parametrize("value", [1j, np.complex64(1 + 1j), jnp.ones(3, jnp.complex64)])
def test_complex_inputs_raise_type_error_where_jax_nn_computes(value):
  # The one intended difference in argument handling: the formulas and their clipping hold on
  # the real line, so a complex input is refused rather than computed in some other way.
  assert jnp.issubdtype(jax.nn.mish(value).dtype, jnp.complexfloating)
  for fn in (
    *(functools.partial(mish_jax.mish, implementation=i) for i in IMPLEMENTATIONS),
    mish_jax.mish_grad,
    mish_jax.swish,
  ):
    with pytest.raises(TypeError, match="real inputs only"):
      fn(value)
  with pytest.raises(TypeError, match="real inputs only"):
    mish_jax.swish(1.0, value)
  with pytest.raises(TypeError, match="real inputs only, got kernel"):
    mish_jax.linear_mish(jnp.ones((2, 2)), jnp.ones((2, 2), jnp.complex64))


def test_the_intended_difference_at_minus_infinity():
  x = jnp.array([-jnp.inf, jnp.inf])
  assert np.isnan(jax.nn.mish(x)[0]) and jax.nn.mish(x)[1] == jnp.inf
  for implementation in IMPLEMENTATIONS:
    y = mish_jax.mish(x, implementation=implementation)
    np.testing.assert_array_equal(np.asarray(y).view(np.uint32), [2**31, 0x7F800000])
