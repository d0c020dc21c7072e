"""The Pallas path is differentiable as the XLA path is: both modes, every order, any transform.

References are the XLA implementation (itself tested against float64 numpy and finite
differences in `test_activations.py`) and `jax.nn.mish`. On CPU the kernels run in interpret
mode, so shapes stay tiny.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import hypothesis
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import strategies as st
from jax.ad_checkpoint import print_saved_residuals

import mish_jax
from mish_jax._src import pallas
from tests.kernel_testing import assert_lowers_to_mosaic_gpu

mish_xla = functools.partial(mish_jax.mish, implementation="xla")
mish_pallas = functools.partial(mish_jax.mish, implementation="pallas")
linear_mish_xla = functools.partial(mish_jax.linear_mish, implementation="xla")
linear_mish_pallas = functools.partial(mish_jax.linear_mish, implementation="pallas")

# float32: the two paths' kernels differ by an ulp or two in mish and mish'; mish'' and above are
# the same XLA formulas. 16-bit: mish' is rounded to the dtype by the kernel, once more than on
# the XLA path.
_RTOL = {jnp.float32: 1e-5, jnp.bfloat16: 2**-7, jnp.float16: 2**-10}
_ATOL = {jnp.float32: 1e-6, jnp.bfloat16: 2**-7, jnp.float16: 2**-10}


def _assert_close(actual, expected, dtype=jnp.float32):
  dtype = jnp.dtype(dtype).type
  np.testing.assert_allclose(
    np.asarray(actual, np.float32),
    np.asarray(expected, np.float32),
    rtol=_RTOL[dtype],
    atol=_ATOL[dtype],
  )


def _total(fn):
  return lambda *args: jnp.sum(fn(*args).astype(jnp.float32))


def _forward_derivative(fn, order: int):
  """The elementwise `order`-th derivative of an elementwise `fn`, by nested `jax.jvp`."""
  for _ in range(order):
    fn = functools.partial(lambda g, v: jax.jvp(g, (v,), (jnp.ones_like(v),))[1], fn)
  return fn


def _reverse_derivative(fn, order: int):
  """The elementwise `order`-th derivative of an elementwise `fn`, by nested `jax.grad`."""
  for _ in range(order):
    fn = functools.partial(lambda g, v: jax.grad(_total(g))(v).astype(v.dtype), fn)
  return fn


X = jnp.linspace(-7.0, 7.0, 11)


class TestMish:
  def test_jvp(self):
    primal, tangent = jax.jvp(mish_pallas, (X,), (X,))
    expected_primal, expected_tangent = jax.jvp(mish_xla, (X,), (X,))
    _assert_close(primal, expected_primal)
    _assert_close(tangent, expected_tangent)

  def test_jacfwd_and_jacrev(self):
    _assert_close(jax.jacfwd(mish_pallas)(X[:4]), jax.jacfwd(mish_xla)(X[:4]))
    _assert_close(jax.jacrev(mish_pallas)(X[:4]), jax.jacfwd(mish_xla)(X[:4]))

  def test_hessian(self):
    x = X[::2]
    _assert_close(jax.hessian(_total(mish_pallas))(x), jax.hessian(_total(mish_xla))(x))

  def test_hessian_at_the_limits_and_far_out(self):
    x = jnp.array([-jnp.inf, -1e30, -100.0, -30.0, 30.0, 100.0, 1e30, jnp.inf])
    second = jax.vmap(jax.hessian(mish_pallas))(x)
    np.testing.assert_array_equal(second, jax.vmap(jax.hessian(mish_xla))(x))
    assert np.isfinite(second).all()

  @pytest.mark.parametrize("order", [1, 2, 3])
  def test_every_mode_to_order_3(self, order):
    expected = _forward_derivative(mish_xla, order)(X)
    _assert_close(_forward_derivative(mish_pallas, order)(X), expected)
    _assert_close(_reverse_derivative(mish_pallas, order)(X), expected)

  @pytest.mark.parametrize("interpret", [False, True], ids=["compiled", "interpreted"])
  def test_reverse_mode_saves_only_x(self, interpret, capsys):
    # Traced only: the compiled kernels need a GPU to run, not to be traced.
    print_saved_residuals(_total(functools.partial(pallas.mish, interpret=interpret)), X)
    residuals = capsys.readouterr().out.strip().splitlines()
    assert len(residuals) == 1 and "from the argument" in residuals[0], residuals

  def test_compiled_checkpoint_lowers_for_the_gpu(self):
    rematerialized = jax.checkpoint(functools.partial(pallas.mish, interpret=False))
    assert_lowers_to_mosaic_gpu(jax.grad(_total(rematerialized)), X)
    with jax.enable_checks(True):  # JAX's own test configuration, on the compiled kernels too.
      assert_lowers_to_mosaic_gpu(jax.grad(_total(rematerialized)), X)
      linear = jax.checkpoint(functools.partial(pallas.linear_mish, interpret=False))
      x, kernel, bias = _operands()
      assert_lowers_to_mosaic_gpu(jax.grad(_total(linear), (0, 1, 2)), x, kernel, bias)

  def test_compiled_derivatives_lower_for_the_gpu(self):
    compiled = functools.partial(pallas.mish, interpret=False)
    assert_lowers_to_mosaic_gpu(lambda v: jax.jvp(compiled, (v,), (v,))[1], X)
    # The hessian of sum(mish^2) = 2 mish'^2 + 2 mish mish'': both kernels and XLA's mish''.
    assert_lowers_to_mosaic_gpu(jax.hessian(lambda v: jnp.sum(compiled(v) ** 2)), X)

  def test_vmap_of_forward_and_reverse_mode(self):
    x = X.reshape(1, 11) + jnp.arange(3.0)[:, None]
    expected = jax.vmap(jax.hessian(mish_xla))(x.reshape(-1))
    _assert_close(jax.vmap(jax.hessian(mish_pallas))(x.reshape(-1)), expected)
    _assert_close(jax.vmap(jax.grad(_total(mish_pallas)))(x), mish_jax.mish_grad(x))

  def test_float64_takes_the_xla_path(self):
    with jax.enable_x64(True):
      x = jnp.linspace(-3.0, 3.0, 7)
      assert x.dtype == jnp.float64
      for actual, expected in zip(
        jax.jvp(mish_pallas, (x,), (x,)), jax.jvp(mish_xla, (x,), (x,)), strict=True
      ):
        assert actual.dtype == jnp.float64
        np.testing.assert_array_equal(actual, expected)
      # The kernels themselves refuse it, naming the XLA implementation.
      with pytest.raises(TypeError, match="use the XLA implementation for float64"):
        pallas.mish(x, interpret=True)


def _run_on_two_cpu_devices(code: str) -> str:
  """Runs `code` in a fresh Python with two CPU devices; returns its stdout."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


_SHARD_MAP_PRELUDE = """
  import functools
  import jax, jax.numpy as jnp, numpy as np, pytest
  from jax.sharding import NamedSharding, PartitionSpec as P
  import mish_jax

  mish_pallas = functools.partial(mish_jax.mish, implementation="pallas")
  linear_mish_pallas = functools.partial(mish_jax.linear_mish, implementation="pallas")
  linear_mish_xla = functools.partial(mish_jax.linear_mish, implementation="xla")

  def mesh_of(num_devices):
    return jax.make_mesh(
      (num_devices,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,),
      devices=jax.devices()[:num_devices],
    )

  def sharded(fn, mesh, check_vma, in_specs=P("d"), out_specs=P("d")):
    return jax.shard_map(
      fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=check_vma
    )

  def total(fn):
    return lambda *a: jnp.sum(fn(*a).astype(jnp.float32))
"""

# Compiled, as on a GPU: lowered for CUDA over a 2-device CPU mesh. Under check_vma=True, JAX
# checks every kernel output's declared variation against its use (a custom_jvp's primal and
# tangent must agree, out_specs must match).
_SHARD_MAP_COMPILED_CODE = """
  from mish_jax._src import dispatch
  dispatch.pallas_compiles = lambda device=None: True
  mesh = mesh_of(2)
  def struct(shape, dtype, spec):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))

  def mosaic_gpu_calls(fn, *args):
    text = jax.export.export(jax.jit(fn), platforms=("cuda",))(*args).mlir_module()
    return text.count("stablehlo.custom_call @mosaic_gpu")

  for check_vma in (False, True):
    x = struct((512,), jnp.float32, P("d"))
    local = functools.partial(sharded, mesh=mesh, check_vma=check_vma)
    fns = {{
      "forward": local(mish_pallas),
      "grad inside": local(jax.grad(total(mish_pallas))),
      "jvp inside": local(lambda v: jax.jvp(mish_pallas, (v,), (v,))[1]),
      # Of sum(mish^2): 2 mish mish'' (XLA's) + 2 mish'^2 (the kernels').
      "hessian-vector inside": local(
        lambda v: jax.jvp(jax.grad(total(lambda u: mish_pallas(u) ** 2)), (v,), (v,))[1]
      ),
      "grad outside": jax.grad(total(local(mish_pallas))),
    }}
    for name, fn in fns.items():
      assert mosaic_gpu_calls(fn, x) >= 1, (check_vma, name)
    # The weight and bias replicated, the batch split.
    operands = (
      struct((128, 64), jnp.{dtype}, P("d")),
      struct((64, 32), jnp.{dtype}, P()),
      struct((32,), jnp.{dtype}, P()),
    )
    specs = (P("d"), P(), P())
    local = functools.partial(sharded, mesh=mesh, check_vma=check_vma, in_specs=specs)
    fns = {{
      "linear forward": (local(linear_mish_pallas), 1),
      "linear grad": (local(jax.grad(total(linear_mish_pallas), (0, 1, 2)), out_specs=specs), 2),
      "linear jvp": (local(lambda *a: jax.jvp(linear_mish_pallas, a, a)[1]), 2),
    }}
    for name, (fn, calls) in fns.items():
      assert mosaic_gpu_calls(fn, *operands) >= calls, (check_vma, name)
  print("ok")
"""

# Interpreted: refused over two devices (each device's kernel would wait for the other's in the
# interpreter), run over one.
_SHARD_MAP_INTERPRETED_CODE = """
  def operands(mesh):
    put = lambda a, spec: jax.device_put(a, NamedSharding(mesh, spec))
    x = jnp.linspace(-6.0, 6.0, 300)
    w = jnp.linspace(-1.0, 1.0, 40).reshape(4, 10)
    b = jnp.linspace(-2.0, 2.0, 10)
    return put(x, P("d")), put(x.reshape(50, 6)[:, :4], P("d")), put(w, P()), put(b, P())

  specs = (P("d"), P(), P())
  two = mesh_of(2)
  x, a, w, b = operands(two)
  for check_vma in (False, True):
    local = functools.partial(sharded, mesh=two, check_vma=check_vma)
    for fn in (mish_pallas, jax.grad(total(mish_pallas))):
      with pytest.raises(NotImplementedError, match='use implementation="xla" there'):
        local(fn)(x)
    with pytest.raises(NotImplementedError, match='linear_mish.*use implementation="xla"'):
      local(linear_mish_pallas, in_specs=specs)(a, w, b)

  one = mesh_of(1)
  x, a, w, b = operands(one)
  close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)
  for check_vma in (False, True):
    local = functools.partial(sharded, mesh=one, check_vma=check_vma)
    close(local(mish_pallas)(x), jax.nn.mish(x))
    close(local(jax.grad(total(mish_pallas)))(x), mish_jax.mish_grad(x))
    close(local(lambda v: jax.jvp(mish_pallas, (v,), (v,))[1])(x), mish_jax.mish_grad(x) * x)
    close(local(linear_mish_pallas, in_specs=specs)(a, w, b), linear_mish_xla(a, w, b))
    linear_grad = jax.grad(total(linear_mish_pallas), (0, 1, 2))
    grads = local(linear_grad, in_specs=specs, out_specs=specs)(a, w, b)
    expected = jax.grad(total(linear_mish_xla), (0, 1, 2))(a, w, b)
    for actual, want in zip(grads, expected, strict=True):
      close(actual, want)
  print("ok")
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_shard_map_compiled_lowers_with_and_without_vma_checks(dtype):
  code = _SHARD_MAP_PRELUDE + _SHARD_MAP_COMPILED_CODE.format(dtype=dtype)
  assert _run_on_two_cpu_devices(code).strip() == "ok"


def test_shard_map_interpreted_refused_over_two_devices_and_run_over_one():
  code = _SHARD_MAP_PRELUDE + _SHARD_MAP_INTERPRETED_CODE
  assert _run_on_two_cpu_devices(code).strip() == "ok"


def _operands(m=5, k=7, n=3, dtype=jnp.float32):
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (m, k), dtype)
  kernel = (jax.random.normal(keys[1], (k, n)) / np.sqrt(k)).astype(dtype)
  bias = jax.random.normal(keys[2], (n,), dtype)
  return x, kernel, bias


class TestLinearMish:
  def test_jvp_in_all_three_arguments(self):
    operands = _operands()
    tangents = tuple(a * 0.5 + 0.25 for a in operands)
    primal, tangent = jax.jvp(linear_mish_pallas, operands, tangents)
    expected_primal, expected_tangent = jax.jvp(linear_mish_xla, operands, tangents)
    _assert_close(primal, expected_primal)
    _assert_close(tangent, expected_tangent)

  def test_hessian_in_all_three_arguments(self):
    operands = _operands(m=2, k=3, n=2)
    argnums = (0, 1, 2)
    actual = jax.jit(jax.hessian(_total(linear_mish_pallas), argnums))(*operands)
    expected = jax.hessian(_total(linear_mish_xla), argnums)(*operands)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
      _assert_close(a, e)

  def test_gradients_without_bias_and_batched(self):
    x, kernel, _ = _operands()
    x = x.reshape(5, 1, 7)
    grads = jax.grad(_total(linear_mish_pallas), (0, 1))(x, kernel)
    expected = jax.grad(_total(linear_mish_xla), (0, 1))(x, kernel)
    for a, e in zip(grads, expected, strict=True):
      _assert_close(a, e)

  def test_reverse_mode_saves_what_the_xla_path_saves(self, capsys):
    residuals = {}
    for name, fn in (("xla", linear_mish_xla), ("pallas", linear_mish_pallas)):
      print_saved_residuals(_total(fn), *_operands())
      lines = capsys.readouterr().out.strip().splitlines()
      residuals[name] = sorted(line.split()[0] for line in lines)
    assert residuals["pallas"] == residuals["xla"] == ["f32[5,3]", "f32[5,7]", "f32[7,3]"]

  def test_bfloat16(self):
    operands = _operands(dtype=jnp.bfloat16)
    tangents = tuple(jnp.ones_like(a) for a in operands)
    _, tangent = jax.jvp(linear_mish_pallas, operands, tangents)
    _, expected = jax.jvp(linear_mish_xla, operands, tangents)
    assert tangent.dtype == jnp.bfloat16
    _assert_close(tangent, expected, jnp.bfloat16)

  def test_compiled_derivatives_lower_for_the_gpu(self):
    compiled = functools.partial(pallas.linear_mish, interpret=False)
    operands = _operands(m=64, k=32, n=16)
    assert_lowers_to_mosaic_gpu(lambda *a: jax.jvp(compiled, a, a)[1], *operands)
    assert_lowers_to_mosaic_gpu(jax.grad(_total(compiled), (0, 1, 2)), *operands)


def test_mnist_train_step_with_mish_pallas():
  from experiments import train

  # The default CNN, on two images: the same loss, and the same parameters after one step.
  images = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1))
  labels = jnp.array([3, 7])
  losses, kernels = {}, {}
  for activation in ("mish", "mish_pallas"):
    model = train.build_model(train.Config(activation=activation), (28, 28, 1), 10)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    losses[activation] = float(train.train_step(model, optimizer, images, labels)[0])
    kernels[activation] = jax.tree.leaves(nnx.state(model, nnx.Param))
  np.testing.assert_allclose(losses["mish_pallas"], losses["mish"], rtol=1e-5)
  for a, e in zip(kernels["mish_pallas"], kernels["mish"], strict=True):
    _assert_close(a, e)


_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


@st.composite
def _finite_inputs(draw):
  """A Python float, or a tiny array of finite values of one of the kernels' dtypes."""
  if draw(st.booleans()):
    return draw(st.floats(-60, 60, width=32))  # A weakly typed scalar.
  dtype = np.dtype(_DTYPES[draw(st.sampled_from(sorted(_DTYPES)))])
  shape = draw(st.sampled_from([(), (2, 3)]))
  width = 32 if dtype == np.float32 else 16
  elements = st.floats(-60, 60, width=width).map(lambda v: np.array(v, np.float32).astype(dtype))
  return np.asarray(draw(hnp.arrays(np.float32, shape, elements=elements))).astype(dtype)


# Jitted once per order, dtype and shape, across examples: the interpreter is slow to trace.
_DERIVATIVES = [
  [jax.jit(_forward_derivative(fn, order)) for fn in (mish_pallas, mish_xla)]
  + ([jax.jit(_reverse_derivative(mish_pallas, order))] if order else [])
  for order in range(4)
]


@hypothesis.settings(max_examples=6, deadline=None)
@hypothesis.given(_finite_inputs())
def test_property_the_implementations_agree_to_order_3(x):
  dtype = jnp.asarray(x).dtype.type
  for derivatives in _DERIVATIVES:
    results = [fn(x) for fn in derivatives]
    expected = results[1]
    for result in results:
      assert result.dtype == expected.dtype
      _assert_close(result, expected, dtype)
    assert results[0].weak_type == expected.weak_type == jax.nn.mish(x).weak_type
