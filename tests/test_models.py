"""Tests of experiments/models.py: parameter counts, shapes, the activation, the summary."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from experiment_testing import SMALL
from flax import nnx

from experiments import models, train


def _params_and_output_shape(build, input_shape):
  """Parameter counts and the output shape of `build()`, traced abstractly: nothing compiles."""

  def output():
    model = build()
    model.eval()
    return model(jnp.zeros(input_shape))

  return models.count_params(nnx.eval_shape(build)), nnx.eval_shape(output).shape


def test_cnn_parameter_count_and_output_shape():
  params, shape = _params_and_output_shape(
    lambda: models.cnn(jax.nn.relu, rngs=nnx.Rngs(0)), (4, 28, 28, 1)
  )
  # From the layer shapes: 28 -conv3-> 26 -pool-> 13 -conv3-> 11 -pool-> 5.
  conv1 = 3 * 3 * 1 * 32 + 32
  conv2 = 3 * 3 * 32 * 64 + 64
  dense = 5 * 5 * 64 * 128 + 128
  head = 128 * 10 + 10
  assert params == (conv1 + conv2 + dense + head, 0)
  assert conv1 + conv2 + dense + head == 225_034
  assert shape == (4, 10)


def test_cnn_batch_norm_and_same_padding():
  params, shape = _params_and_output_shape(
    lambda: models.cnn(
      jax.nn.relu, rngs=nnx.Rngs(0), padding="SAME", batch_norm=True, features=(4, 8), dense=16
    ),
    (2, 28, 28, 1),
  )
  # 28 -pool-> 14 -pool-> 7; no biases before BatchNorm, which has scale and bias (trainable)
  # and mean and var (not).
  trainable = 3 * 3 * 1 * 4 + 2 * 4 + 3 * 3 * 4 * 8 + 2 * 8 + 7 * 7 * 8 * 16 + 2 * 16 + 16 * 10 + 10
  assert params == (trainable, 2 * (4 + 8 + 16))
  assert shape == (2, 10)


def test_mlp_parameter_count_and_output_shape():
  params, shape = _params_and_output_shape(
    lambda: models.mlp(jax.nn.relu, rngs=nnx.Rngs(0), hidden=(64,) * 5, dropout=0.1),
    (3, 28, 28, 1),
  )
  assert params == (784 * 64 + 64 + 4 * (64 * 64 + 64) + 64 * 10 + 10, 0)
  assert shape == (3, 10)


def test_model_receives_the_activation_callable():
  calls = []

  def spy(x):
    calls.append(x.shape)
    return jax.nn.relu(x)

  _params_and_output_shape(lambda: models.cnn(spy, rngs=nnx.Rngs(0)), (1, 28, 28, 1))
  assert calls == [(1, 26, 26, 32), (1, 11, 11, 64), (1, 128)]


def test_build_model_rejects_unknown_names():
  with pytest.raises(ValueError, match="unknown model"):
    train.build_model(dataclasses.replace(SMALL, model="resnet"), (28, 28, 1), 10)
  with pytest.raises(ValueError, match="relu"):  # mish_jax lists the valid names
    train.build_model(dataclasses.replace(SMALL, activation="tanhh"), (28, 28, 1), 10)


def test_model_summary_lists_layers_shapes_and_params():
  model = models.cnn(jax.nn.relu, rngs=nnx.Rngs(0))
  tracked = nnx.Any(nnx.Param, nnx.RngCount)
  state_before = jax.tree.map(np.asarray, nnx.state(model, tracked))
  summary = models.model_summary(model, (28, 28, 1))
  assert "Total params: 225,034" in summary
  assert "Non-trainable params: 0" in summary
  for shape, params in [("(None, 26, 26, 32)", "320"), ("(None, 5, 5, 64)", "0")]:
    assert any(shape in line and line.endswith(params) for line in summary.splitlines())
  assert "(None, 10)" in summary.splitlines()[-6]  # the head, above the totals
  # The summary runs a copy: the model's RNG counters and parameters are untouched.
  jax.tree.map(
    np.testing.assert_array_equal, state_before, jax.tree.map(np.asarray, nnx.state(model, tracked))
  )


@pytest.mark.parametrize("shape", [(2, 26, 26, 3), (1, 11, 11, 2), (1, 4, 6, 1)])
def test_max_pool_2x2_equals_nnx_max_pool(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  np.testing.assert_array_equal(
    models.max_pool_2x2(x), nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  )
