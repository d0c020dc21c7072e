"""The MNIST CNN's whole train step with the Pallas kernels, lowered for CUDA on this CPU host.

The model is the main job's Keras-style CNN (`experiments`' `cnn`: conv 32, pool, conv 64, pool,
dropout, dense 128, dropout, dense 10), copied here so the test does not depend on the
experiments' module layout; its activation is `mish_jax.get_activation("mish_pallas")` and its
hidden dense layer and Mish are one `MishLinear(implementation="pallas")`. `jax.export` runs the
whole Pallas to Mosaic GPU lowering without a GPU, so a kernel that a GPU would refuse for its
shapes, layouts or tiles fails here. A lowering failure is a test failure, never a skip.

On a CPU host, dispatch runs `implementation="pallas"` under GPU interpret mode; the tests make
dispatch see a Hopper GPU, so the step is traced as a Hopper host traces it.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

import mish_jax
from mish_jax._src import dispatch

MOSAIC_GPU_CALL = re.compile(r"stablehlo\.custom_call @mosaic_gpu\w*\(")
# Mish runs three times per step: after each conv, and fused into the hidden dense layer.
MISH_APPLICATIONS = 3


@pytest.fixture
def traced_as_on_hopper(monkeypatch):
  """`implementation="pallas"` picks the compiled kernels, as on an H100 or H200.

  The trace caches are cleared on both sides: a jitted op traced in interpret mode by an earlier
  test must not be reused here, nor a compiled kernel traced here by a later test on the CPU.
  """
  jax.clear_caches()
  monkeypatch.setattr(dispatch, "pallas_compiles", lambda device=None: True)
  yield
  jax.clear_caches()


def _max_pool(x: jax.Array) -> jax.Array:
  return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))


def _cnn(rngs: nnx.Rngs) -> nnx.Sequential:
  mish = mish_jax.get_activation("mish_pallas")
  return nnx.Sequential(
    nnx.Conv(1, 32, (3, 3), padding="VALID", rngs=rngs),
    mish,
    _max_pool,
    nnx.Conv(32, 64, (3, 3), padding="VALID", rngs=rngs),
    mish,
    _max_pool,
    nnx.Dropout(0.25, rngs=rngs),
    lambda x: x.reshape(x.shape[0], -1),
    mish_jax.MishLinear(5 * 5 * 64, 128, rngs=rngs, implementation="pallas"),
    nnx.Dropout(0.5, rngs=rngs),
    nnx.Linear(128, 10, rngs=rngs),
  )


def _loss(model: nnx.Module, images: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()


def _pure_step_and_state(batch: int):
  """The nnx train step (forward, backward, Adam) as a pure function of its state, and its args."""
  model = _cnn(nnx.Rngs(params=0, dropout=1))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))

  def loss_only(state, images, labels):
    model, _ = nnx.merge(graphdef, state)
    return _loss(model, images, labels)

  def train_step(state, images, labels):
    model, optimizer = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(_loss)(model, images, labels)
    optimizer.update(model, grads)
    return loss, nnx.split((model, optimizer))[1]

  images = jax.ShapeDtypeStruct((batch, 28, 28, 1), jnp.float32)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
  return loss_only, train_step, (state, images, labels)


def _cuda_module(fn, args) -> str:
  return jax.export.export(jax.jit(fn), platforms=("cuda",))(*args).mlir_module()


def _kernel_names(module: str) -> list[str]:
  """The Mosaic GPU kernels' names, read from their serialized modules, for failure messages."""
  return [name for name in re.findall(r"([a-z][a-z_]*?)_mosaic_gpu", module) if name != "stable"]


# The main job's batch, and one that is not a multiple of any tile of the fused kernel.
@pytest.mark.parametrize("batch", [64, 50])
def test_train_step_lowers_to_mosaic_gpu_kernels(batch, traced_as_on_hopper):
  loss_only, train_step, args = _pure_step_and_state(batch)
  forward = _cuda_module(loss_only, args)
  step = _cuda_module(train_step, args)
  forward_calls = len(MOSAIC_GPU_CALL.findall(forward))
  step_calls = len(MOSAIC_GPU_CALL.findall(step))
  # One forward kernel per Mish: the two elementwise ones and the fused dense layer.
  assert forward_calls == MISH_APPLICATIONS, (forward_calls, _kernel_names(forward))
  # And, in the step, one more per Mish for its derivative: the gradient needs all three.
  assert step_calls == 2 * MISH_APPLICATIONS, (step_calls, _kernel_names(step))


def test_without_the_patch_dispatch_decides():
  """The control: unpatched, the default device decides; a CPU interprets, with no Mosaic call."""
  jax.clear_caches()
  x = jax.ShapeDtypeStruct((64, 26, 26, 32), jnp.float32)
  module = jax.jit(mish_jax.get_activation("mish_pallas")).lower(x).as_text()
  assert bool(MOSAIC_GPU_CALL.search(module)) == mish_jax.pallas_compiles()
