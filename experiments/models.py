"""The models of the experiments: `nnx.Sequential` stacks that take the activation as a callable.

* `cnn`: the Keras-style MNIST CNN (the main study's, and the noise test's);
* `mlp`: a fully connected stack (the landscape test's random networks);
* `deep_cnn`: the Mish paper's depth test, convs then a deep BatchNorm dense stack.

`MODELS` names them for `train.Config`; `count_params` and `model_summary` describe one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Activation = Callable[[jax.Array], jax.Array]


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling, stride 2, dropping an odd last row/column (Keras `MaxPooling2D()`).

  A reshape and a max rather than `nnx.max_pool`: XLA's CPU select-and-scatter, the gradient of
  reduce-window, made the whole MNIST CNN train step about 1.8x slower.

  Args:
    x: (N, H, W, C) images.

  Returns:
    (N, H // 2, W // 2, C).
  """
  n, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def flatten(x: jax.Array) -> jax.Array:
  """(N, ...) -> (N, prod(...))."""
  return x.reshape(x.shape[0], -1)


def cnn(
  activation: Activation,
  *,
  rngs: nnx.Rngs,
  input_shape: Sequence[int] = (28, 28, 1),
  num_classes: int = 10,
  features: Sequence[int] = (32, 64),
  kernel_size: int = 3,
  padding: str = "VALID",
  dense: int = 128,
  dropout: tuple[float, float] = (0.25, 0.5),
  batch_norm: bool = False,
) -> nnx.Sequential:
  """A Keras-style image CNN: [conv, (BN), act, max-pool] per feature count, then dense, head.

  The default is the Keras MNIST CNN with a 2x2 max-pool after each of its two 3x3 convs, which
  cuts its train step about 3x: conv 32, pool, conv 64, pool, dropout 0.25, dense 128, dropout
  0.5, dense 10 (225,034 parameters on 28x28x1).

  Args:
    activation: the nonlinearity after every conv and the hidden dense layer.
    rngs: the `params` and `dropout` streams.
    input_shape: (H, W, C) of one image.
    num_classes: outputs of the head (logits).
    features: output channels of each conv block; each block halves H and W.
    kernel_size: the convs' square kernel.
    padding: "VALID" (Keras' default) or "SAME".
    dense: width of the hidden dense layer.
    dropout: rates after the conv blocks and after the hidden dense layer; 0 drops the layer.
    batch_norm: BatchNorm before each hidden activation (the convs and dense then have no bias).

  Returns:
    The model: (N, H, W, C) images -> (N, num_classes) logits.
  """
  height, width, channels = input_shape
  layers: list[Callable[..., jax.Array]] = []
  for out in features:
    layers.append(
      nnx.Conv(
        channels,
        out,
        (kernel_size, kernel_size),
        padding=padding,
        use_bias=not batch_norm,
        rngs=rngs,
      )
    )
    if batch_norm:
      layers.append(nnx.BatchNorm(out, rngs=rngs))
    layers += [activation, max_pool_2x2]
    if padding == "VALID":
      height, width = height - kernel_size + 1, width - kernel_size + 1
    height, width, channels = height // 2, width // 2, out
  if dropout[0]:
    layers.append(nnx.Dropout(dropout[0], rngs=rngs))
  head = mlp(
    activation,
    rngs=rngs,
    input_shape=(height, width, channels),
    num_classes=num_classes,
    hidden=(dense,),
    dropout=dropout[1],
    batch_norm=batch_norm,
  )
  return nnx.Sequential(*layers, *head.layers)


def mlp(
  activation: Activation,
  *,
  rngs: nnx.Rngs,
  input_shape: Sequence[int] = (28, 28, 1),
  num_classes: int = 10,
  hidden: Sequence[int] = (512, 512),
  dropout: float = 0.0,
  batch_norm: bool = False,
  batch_norm_momentum: float = 0.99,
) -> nnx.Sequential:
  """A fully connected stack: flatten, then [dense, (BN), act, (dropout)] per hidden width, head.

  Args:
    activation: the nonlinearity after every hidden layer.
    rngs: the `params` and `dropout` streams.
    input_shape: the shape of one example; it is flattened.
    num_classes: outputs of the head (logits).
    hidden: the hidden layers' widths; deep stacks are e.g. `(500,) * 20`.
    dropout: rate after each hidden activation; 0 for none.
    batch_norm: BatchNorm before each hidden activation (the dense layers then have no bias).
    batch_norm_momentum: the decay of BatchNorm's running statistics (Keras' and Flax's 0.99;
      short runs need less for their test-time statistics to settle).

  Returns:
    The model: (N, *input_shape) -> (N, num_classes) logits.
  """
  layers: list[Callable[..., jax.Array]] = [flatten]
  width = math.prod(input_shape)
  for out in hidden:
    layers.append(nnx.Linear(width, out, use_bias=not batch_norm, rngs=rngs))
    if batch_norm:
      layers.append(nnx.BatchNorm(out, momentum=batch_norm_momentum, rngs=rngs))
    layers.append(activation)
    if dropout:
      layers.append(nnx.Dropout(dropout, rngs=rngs))
    width = out
  layers.append(nnx.Linear(width, num_classes, rngs=rngs))
  return nnx.Sequential(*layers)


def deep_cnn(
  activation: Activation,
  *,
  rngs: nnx.Rngs,
  input_shape: Sequence[int] = (28, 28, 1),
  num_classes: int = 10,
  features: Sequence[int] = (20, 50),
  kernel_size: int = 5,
  dense_layers: int = 12,
  dense: int = 500,
  dropout: float = 0.25,
  batch_norm_momentum: float = 0.99,
) -> nnx.Sequential:
  """The Mish paper's depth test: convs, one max-pool, dropout, then a deep BatchNorm dense stack.

  [conv (VALID), act] per feature count, 2x2 max-pool, dropout, then `dense_layers` x [dense,
  BatchNorm, act, dropout] and the head (the `mlp` stack). It has `len(features) + dense_layers +
  1` weight layers: 15 with the defaults.

  Args:
    activation: the nonlinearity after every conv and hidden dense layer.
    rngs: the `params` and `dropout` streams.
    input_shape: (H, W, C) of one image.
    num_classes: outputs of the head (logits).
    features: output channels of each conv.
    kernel_size: the convs' square kernel.
    dense_layers: how many hidden dense layers.
    dense: their width.
    dropout: rate after the pool and after each hidden dense layer; 0 for none.
    batch_norm_momentum: as in `mlp`.

  Returns:
    The model: (N, H, W, C) images -> (N, num_classes) logits.
  """
  height, width, channels = input_shape
  layers: list[Callable[..., jax.Array]] = []
  for out in features:
    layers += [
      nnx.Conv(channels, out, (kernel_size, kernel_size), padding="VALID", rngs=rngs),
      activation,
    ]
    height, width, channels = height - kernel_size + 1, width - kernel_size + 1, out
  layers.append(max_pool_2x2)
  if dropout:
    layers.append(nnx.Dropout(dropout, rngs=rngs))
  stack = mlp(
    activation,
    rngs=rngs,
    input_shape=(height // 2, width // 2, channels),
    num_classes=num_classes,
    hidden=(dense,) * dense_layers,
    dropout=dropout,
    batch_norm=True,
    batch_norm_momentum=batch_norm_momentum,
  )
  return nnx.Sequential(*layers, *stack.layers)


MODELS: dict[str, Callable[..., nnx.Sequential]] = {"cnn": cnn, "mlp": mlp, "deep_cnn": deep_cnn}


def count_params(module: Any) -> tuple[int, int]:
  """Returns (trainable, non-trainable) parameter counts: `nnx.Param`s, then BatchNorm stats."""

  def size(state: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))

  if not isinstance(module, nnx.Module):
    return 0, 0
  return size(nnx.state(module, nnx.Param)), size(nnx.state(module, nnx.BatchStat))


def model_summary(model: nnx.Sequential, input_shape: Sequence[int]) -> str:
  """A Keras `model.summary()`-style table: each layer's type, output shape and parameters.

  Output shapes come from running each layer in turn on one zero example, on a copy of the model
  in eval mode, so the model's dropout RNG and BatchNorm statistics are untouched.

  Args:
    model: an `nnx.Sequential`, e.g. from `cnn` or `mlp`.
    input_shape: the shape of one example, without the batch axis.

  Returns:
    The table, as text.
  """
  probe = nnx.clone(model)
  probe.eval()
  x = jnp.zeros((1, *input_shape), jnp.float32)
  rows = [("Layer (type)", "Output shape", "Param #")]
  for i, layer in enumerate(probe.layers):
    x = layer(x)
    kind = type(layer).__name__ if isinstance(layer, nnx.Module) else getattr(layer, "__name__", "")
    trainable, frozen = count_params(layer)
    params = f"{trainable:,}" + (f" (+{frozen:,} stats)" if frozen else "")
    rows.append((f"{i:<2} {kind}", str((None, *x.shape[1:])), params))
  widths = [max(len(row[c]) for row in rows) for c in range(3)]
  rule = "-" * (sum(widths) + 4)

  def line(row: tuple[str, str, str]) -> str:
    return f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}"

  trainable, frozen = count_params(model)
  return "\n".join(
    [rule, line(rows[0]), rule, *map(line, rows[1:]), rule]
    + [f"Total params: {trainable + frozen:,}", f"Trainable params: {trainable:,}"]
    + [f"Non-trainable params: {frozen:,}", rule]
  )
