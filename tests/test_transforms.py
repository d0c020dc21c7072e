"""Both implementations under the transformations deep nets are trained with.

`jax_enable_checks`, `jax.checkpoint` with every policy that saves nothing or only `x`,
`nnx.remat`, `jax.vmap`, `jax.jit` with donated buffers and `shard_map` over one device: each for
`mish` and `linear_mish`, against the XLA path without the transformation. On CPU the Pallas
path runs its kernels in Mosaic GPU interpret mode; `test_pallas_autodiff.py` lowers the compiled
kernels for CUDA under the same transformations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import checkpoint_name, print_saved_residuals
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import mish_jax

IMPLEMENTATIONS = pytest.mark.parametrize("implementation", ["xla", "pallas"])
X = jnp.linspace(-7.0, 7.0, 11)
# The Pallas path's kernels differ from the XLA path's formulas by an ulp or two.
close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6)


def _operands():
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (6, 5))
  kernel = jax.random.normal(keys[1], (5, 4)) / np.sqrt(5)
  return x, kernel, jax.random.normal(keys[2], (4,))


def _mish_loss(implementation):
  return lambda x: jnp.sum(mish_jax.mish(x, implementation=implementation) ** 2)


def _linear_loss(implementation):
  def loss(x, kernel, bias):
    return jnp.sum(mish_jax.linear_mish(x, kernel, bias, implementation=implementation) ** 2)

  return loss


_EXPECTED_MISH_GRAD = jax.grad(_mish_loss("xla"))(X)
_EXPECTED_LINEAR_GRADS = jax.grad(_linear_loss("xla"), (0, 1, 2))(*_operands())


@IMPLEMENTATIONS
def test_under_jax_enable_checks(implementation):
  with jax.enable_checks(True):
    close(mish_jax.mish(X, implementation=implementation), mish_jax.mish(X))
    close(jax.grad(_mish_loss(implementation))(X), _EXPECTED_MISH_GRAD)
    tangent = jax.jvp(functools.partial(mish_jax.mish, implementation=implementation), (X,), (X,))
    close(tangent[1], mish_jax.mish_grad(X) * X)
    close(jax.hessian(_mish_loss(implementation))(X[:4]), jax.hessian(_mish_loss("xla"))(X[:4]))
    grads = jax.grad(_linear_loss(implementation), (0, 1, 2))(*_operands())
    for actual, expected in zip(grads, _EXPECTED_LINEAR_GRADS, strict=True):
      close(actual, expected)


# Every policy that saves nothing, or only the input (named "x"), for the backward pass.
POLICIES = {
  "default": None,
  "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
  "dots_saveable": jax.checkpoint_policies.dots_saveable,
  "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  "save_only_x": jax.checkpoint_policies.save_only_these_names("x"),
}


@IMPLEMENTATIONS
@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
def test_checkpoint_gradients_equal_the_xla_path(implementation, policy):
  def mish_of_named(x):
    return _mish_loss(implementation)(checkpoint_name(x, "x"))

  rematerialized = jax.checkpoint(mish_of_named, policy=policy)
  close(jax.grad(rematerialized)(X), _EXPECTED_MISH_GRAD)
  close(jax.jit(jax.grad(rematerialized))(X), _EXPECTED_MISH_GRAD)

  def linear_of_named(x, kernel, bias):
    return _linear_loss(implementation)(checkpoint_name(x, "x"), kernel, bias)

  linear = jax.checkpoint(linear_of_named, policy=policy)
  for actual, expected in zip(
    jax.grad(linear, (0, 1, 2))(*_operands()), _EXPECTED_LINEAR_GRADS, strict=True
  ):
    close(actual, expected)


@IMPLEMENTATIONS
def test_checkpoint_saves_only_the_inputs(implementation, capsys):
  print_saved_residuals(jax.checkpoint(_mish_loss(implementation)), X)
  residuals = capsys.readouterr().out.strip().splitlines()
  assert residuals and all("from the argument" in line for line in residuals), residuals


class _MishMLP(nnx.Module):
  def __init__(self, implementation: str, rngs: nnx.Rngs):
    self.dense = mish_jax.MishLinear(5, 8, rngs=rngs, implementation=implementation)
    self.out = nnx.Linear(8, 1, rngs=rngs)
    self.implementation = implementation

  def __call__(self, x):
    return self.out(mish_jax.mish(self.dense(x), implementation=self.implementation))


@IMPLEMENTATIONS
def test_nnx_remat(implementation):
  x = _operands()[0]

  def grads_of(implementation, remat):
    model = _MishMLP(implementation, nnx.Rngs(0))

    def loss(model, x):
      forward = nnx.remat(lambda m, v: m(v)) if remat else (lambda m, v: m(v))
      return jnp.sum(forward(model, x) ** 2)

    return nnx.grad(loss)(model, x)

  expected = jax.tree.leaves(nnx.to_pure_dict(nnx.state(grads_of("xla", remat=False))))
  actual = jax.tree.leaves(nnx.to_pure_dict(nnx.state(grads_of(implementation, remat=True))))
  assert len(actual) == len(expected) == 4
  for a, e in zip(actual, expected, strict=True):
    close(a, e)


@IMPLEMENTATIONS
def test_vmap_of_gradients(implementation):
  rows = X.reshape(1, 11) + jnp.arange(3.0)[:, None]
  close(
    jax.vmap(jax.grad(_mish_loss(implementation)))(rows),
    jax.vmap(jax.grad(_mish_loss("xla")))(rows),
  )
  x, kernel, bias = _operands()
  kernels = jnp.stack([kernel, 2 * kernel])
  batched = jax.vmap(jax.grad(_linear_loss(implementation), (0, 1)), (None, 0, None))
  for actual, expected in zip(
    batched(x, kernels, bias),
    jax.vmap(jax.grad(_linear_loss("xla"), (0, 1)), (None, 0, None))(x, kernels, bias),
    strict=True,
  ):
    close(actual, expected)


@IMPLEMENTATIONS
def test_jit_with_donated_inputs(implementation):
  x, kernel, bias = _operands()
  mish = jax.jit(functools.partial(mish_jax.mish, implementation=implementation), donate_argnums=0)
  close(mish(jnp.array(X)), mish_jax.mish(X))
  step = jax.jit(jax.grad(_linear_loss(implementation), (0, 1, 2)), donate_argnums=(0, 1, 2))
  grads = step(jnp.array(x), jnp.array(kernel), jnp.array(bias))
  for actual, expected in zip(grads, _EXPECTED_LINEAR_GRADS, strict=True):
    close(actual, expected)


@IMPLEMENTATIONS
@pytest.mark.parametrize("check_vma", [False, True])
def test_shard_map_over_one_device(implementation, check_vma):
  mesh = jax.make_mesh((1,), ("d",), devices=jax.devices()[:1])
  local = functools.partial(jax.shard_map, mesh=mesh, check_vma=check_vma)
  specs = (P("d"), P(), P())
  x = jax.device_put(X, NamedSharding(mesh, P("d")))
  grad = local(jax.grad(_mish_loss(implementation)), in_specs=P("d"), out_specs=P("d"))
  close(jax.jit(grad)(x), _EXPECTED_MISH_GRAD)
  operands = [
    jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(_operands(), specs, strict=True)
  ]
  linear = local(jax.grad(_linear_loss(implementation), (0, 1, 2)), in_specs=specs, out_specs=specs)
  # Each device's gradients of the replicated weight and bias are its own shard's: one device.
  for actual, expected in zip(jax.jit(linear)(*operands), _EXPECTED_LINEAR_GRADS, strict=True):
    close(actual, expected)
