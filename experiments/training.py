"""Models, training, statistics and reports shared by the experiments.

The pieces, each usable on its own:

* Models: `cnn` and `mlp` build `nnx.Sequential` stacks that take the activation as a callable
  (optionally with BatchNorm and dropout); `build_model` picks one by name from a `Config`;
  `model_summary` prints a Keras-style table of layers, output shapes and parameter counts.
* Training: `train_and_evaluate(config, workdir)` trains one (activation, seed) with Optax under
  `@nnx.jit`, data-parallel over every device of a `jax.sharding.Mesh`, checkpoints with Orbax
  after every epoch and resumes from the last checkpoint in `workdir`. `run_sweep` trains a grid
  of (activation, seed) into one results.json, skipping the runs it already holds.
* Metrics and statistics: `metrics_from_confusion`, `mean_ci` (t-distribution), `welch_test`,
  `summarize_runs`.
* Reports: `environment`, the PNG plots (`plot_*`) and `markdown_table`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import stats
from tqdm import tqdm

import mish_jax
from experiments import data

matplotlib.use("Agg")  # files only: no display on these machines
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

Activation = Callable[[jax.Array], jax.Array]
DATA_AXIS = "data"

# --------------------------------------------------------------------------------------------------
# Models


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


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class Config:
  """One training run: model, data, optimizer and schedule.

  The defaults are the MNIST comparison's (`python experiments/mnist.py`): the pooled Keras-style
  CNN, Adam with linear warmup for half an epoch then cosine decay to 1% of a peak of 3e-3,
  batch 64, 3 epochs. Batch 64 rather than 128: on a 2-core CPU its step takes a third of batch
  128's (29 vs 91 ms, the activations fit in cache), so an epoch is 1.6x faster, and the twice as
  many steps reach higher accuracy in 3 epochs (ReLU: 99.1-99.2% vs 99.0-99.1%).

  Attributes:
    activation: a name from `mish_jax.ACTIVATIONS`.
    seed: seeds the parameters, dropout and the shuffling.
    model: a key of `MODELS`.
    model_options: extra keyword arguments for the model builder, e.g. `{"batch_norm": True}`.
    dataset: a dataset name for `data.load`.
    data_dir: where `data.load` looks (None: `data.DEFAULT_DATA_DIR`).
    train_limit: train on the first N training examples only (None: all).
    epochs: passes over the training set.
    batch_size: global batch; divisible by the number of devices.
    eval_batch_size: batch of the evaluation passes; divisible by the number of devices.
    learning_rate: the schedule's peak.
    warmup_epochs: linear warmup from 0 (0: the learning rate starts at its peak).
    schedule: "warmup_cosine" (decays to 1% of the peak at the end) or "constant".
    optimizer: "adam" or "sgd" (plain: no momentum, no weight decay).
  """

  activation: str = "relu"
  seed: int = 0
  model: str = "cnn"
  model_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  dataset: str = "mnist"
  data_dir: str | None = None
  train_limit: int | None = None
  epochs: int = 3
  batch_size: int = 64
  eval_batch_size: int = 250
  learning_rate: float = 3e-3
  warmup_epochs: float = 0.5
  schedule: str = "warmup_cosine"
  optimizer: str = "adam"

  def to_json(self) -> dict[str, Any]:
    """The fields as they read back from JSON (tuples become lists), for storing and comparing."""
    fields = dataclasses.asdict(self)
    fields["model_options"] = dict(self.model_options)
    return json.loads(json.dumps(fields))


def build_model(config: Config, input_shape: Sequence[int], num_classes: int) -> nnx.Sequential:
  """The model `config` names, with `mish_jax.get_activation(config.activation)`.

  Args:
    config: picks the builder (`config.model`), its options and the activation; `config.seed`
      seeds the parameters and, through a separate stream, dropout.
    input_shape: the shape of one example.
    num_classes: outputs of the head.

  Returns:
    The model, in train mode.

  Raises:
    ValueError: for an unknown model or activation name.
  """
  if config.model not in MODELS:
    raise ValueError(f"unknown model {config.model!r}: choose one of {', '.join(MODELS)}")
  activation = mish_jax.get_activation(config.activation)
  params_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  rngs = nnx.Rngs(params=params_key, dropout=dropout_key)
  return MODELS[config.model](
    activation,
    rngs=rngs,
    input_shape=tuple(input_shape),
    num_classes=num_classes,
    **config.model_options,
  )


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
  """The schedule `config.schedule` names, over `config.epochs * steps_per_epoch` steps."""
  total = config.epochs * steps_per_epoch
  if config.schedule == "constant":
    return optax.constant_schedule(config.learning_rate)
  if config.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=config.learning_rate,
      warmup_steps=min(int(config.warmup_epochs * steps_per_epoch), total - 1),
      decay_steps=total,
      end_value=config.learning_rate * 0.01,
    )
  raise ValueError(f"unknown schedule {config.schedule!r}: 'warmup_cosine' or 'constant'")


_OPTIMIZERS: dict[tuple[Any, ...], optax.GradientTransformation] = {}


def make_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
  """`config.optimizer` on `learning_rate_schedule(config, steps_per_epoch)`.

  The same settings return the same object: `train_step`'s compiled form is keyed on it (it is
  static in `nnx.Optimizer`), so runs that differ only in the seed compile once.
  """
  key = (
    config.optimizer,
    config.schedule,
    config.learning_rate,
    config.warmup_epochs,
    config.epochs,
    steps_per_epoch,
  )
  if key not in _OPTIMIZERS:
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "adam":
      _OPTIMIZERS[key] = optax.adam(schedule)
    elif config.optimizer == "sgd":
      _OPTIMIZERS[key] = optax.sgd(schedule)
    else:
      raise ValueError(f"unknown optimizer {config.optimizer!r}: 'adam' or 'sgd'")
  return _OPTIMIZERS[key]


# --------------------------------------------------------------------------------------------------
# Metrics


def confusion_matrix(
  labels: jax.Array, predictions: jax.Array, num_classes: int, weights: jax.Array | None = None
) -> jax.Array:
  """(num_classes, num_classes) int32 counts: rows are true labels, columns predictions."""
  counts = jnp.ones_like(labels) if weights is None else weights.astype(jnp.int32)
  return jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, predictions].add(counts)


def metrics_from_confusion(confusion: np.ndarray) -> dict[str, Any]:
  """Accuracy, macro-F1 and per-class F1 from a confusion matrix (rows true, columns predicted).

  A class with no examples and no predictions has F1 0, as in scikit-learn's `zero_division=0`.
  """
  confusion = np.asarray(confusion, np.int64)
  true_positives = np.diag(confusion).astype(np.float64)
  denominator = confusion.sum(0) + confusion.sum(1)  # 2 TP + FP + FN
  f1 = np.divide(
    2 * true_positives, denominator, out=np.zeros_like(true_positives), where=denominator > 0
  )
  return {
    "accuracy": float(true_positives.sum() / max(confusion.sum(), 1)),
    "macro_f1": float(f1.mean()),
    "per_class_f1": f1.tolist(),
  }


# --------------------------------------------------------------------------------------------------
# Training


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (all devices, across hosts, by default) for data parallelism."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def _global_batch(mesh: Mesh, rows: np.ndarray) -> jax.Array:
  """Shards a batch that every process holds whole over the mesh's data axis.

  Each process hands over only the rows that its own devices hold, so the same call works on one
  host and on many.
  """
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  local = len(rows) // jax.process_count()
  start = jax.process_index() * local
  return jax.make_array_from_process_local_data(sharding, rows[start : start + local], rows.shape)


def _to_host(x: jax.Array) -> np.ndarray:
  """A result as numpy, gathered from every host when it spans several."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


@nnx.jit
def train_step(
  model: nnx.Module, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """One optimizer step on a batch; returns its mean loss and its predictions' confusion matrix.

  Sharded `images` and `labels` with replicated parameters make this data-parallel: XLA inserts
  the gradient all-reduce.
  """

  def loss_fn(model: nnx.Module) -> tuple[jax.Array, jax.Array]:
    logits = model(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads)
  return loss, confusion_matrix(labels, logits.argmax(-1), logits.shape[-1])


@nnx.jit
def eval_step(
  model: nnx.Module, images: jax.Array, labels: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The summed loss and the confusion matrix of a batch; `mask` is 0 on padding rows."""
  logits = model(images)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return (losses * mask).sum(), confusion_matrix(labels, logits.argmax(-1), logits.shape[-1], mask)


def _padded_batches(
  images: np.ndarray, labels: np.ndarray, batch_size: int
) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Batches of a fixed size (one compiled shape), the last padded and masked out."""
  for start in range(0, len(labels), batch_size):
    x, y = images[start : start + batch_size], labels[start : start + batch_size]
    pad = batch_size - len(y)
    mask = np.concatenate([np.ones(len(y), np.float32), np.zeros(pad, np.float32)])
    yield np.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)), np.pad(y, (0, pad)), mask


def evaluate(
  model: nnx.Module,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  batch_size: int = 250,
  mesh: Mesh | None = None,
) -> dict[str, Any]:
  """Loss, accuracy, macro-F1, per-class F1 and confusion matrix of `model` (in eval mode).

  Args:
    model: the model; put it in eval mode first (`model.eval()`).
    images: (N, ...) inputs, held whole by every process.
    labels: (N,) int labels.
    batch_size: examples per step; divisible by the number of devices.
    mesh: the data-parallel mesh (default: all devices).

  Returns:
    A dict with "loss", "accuracy", "macro_f1", "per_class_f1" and "confusion_matrix" (lists).
  """
  mesh = make_mesh() if mesh is None else mesh
  loss_sum, confusion = 0.0, 0
  for x, y, mask in _padded_batches(images, labels, batch_size):
    batch = [_global_batch(mesh, a) for a in (x, y, mask)]
    loss, cm = eval_step(model, *batch)
    loss_sum, confusion = loss_sum + loss, confusion + cm
  confusion = _to_host(confusion)
  return {
    "loss": float(_to_host(loss_sum)) / len(labels),
    **metrics_from_confusion(confusion),
    "confusion_matrix": confusion.tolist(),
  }


def _check_divisible(config: Config, mesh: Mesh) -> None:
  devices = mesh.devices.size
  for name in ("batch_size", "eval_batch_size"):
    if getattr(config, name) % devices:
      raise ValueError(
        f"{name} {getattr(config, name)} is not divisible by the {devices} devices: "
        f"choose a multiple of {devices}"
      )


def _checkpoint_manager(workdir: Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
    workdir.absolute() / "checkpoints",
    options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
  )


@dataclasses.dataclass
class TrainResult:
  """What `train_and_evaluate` returns.

  Attributes:
    model: the trained model, in eval mode.
    record: JSON-ready: "activation", "seed", "epochs" (one dict of metrics per epoch: train
      and test loss, accuracy and macro-F1, the wall and process CPU seconds of training and the
      wall seconds of evaluating, the first epoch's including the eval step's compilation),
      "test_accuracy", "test_macro_f1", "test_per_class_f1", "test_confusion_matrix",
      "epoch_time_s" and "epoch_cpu_time_s" (means over epochs, compilation excluded),
      "compile_time_s" (the train step's; near 0 when jit's cache had it), "params",
      "non_trainable_params", "devices", "config".
  """

  model: nnx.Sequential
  record: dict[str, Any]


def train_and_evaluate(
  config: Config,
  workdir: str | os.PathLike[str] | None,
  *,
  dataset: data.Dataset | None = None,
  mesh: Mesh | None = None,
  progress: bool = False,
  on_epoch_end: Callable[[Mapping[str, Any]], None] | None = None,
) -> TrainResult:
  """Trains and evaluates one model, checkpointing after every epoch and resuming if it can.

  Every epoch shuffles with a generator seeded by (seed, epoch) and drops the last incomplete
  batch; dropout keys live in the model state. The same config therefore gives the same numbers,
  and a run resumed from its checkpoint continues exactly where it stopped.

  Args:
    config: the run.
    workdir: where checkpoints go; a checkpoint already there (from the same config) is resumed
      and its finished epochs are not redone. None: no checkpoints.
    dataset: the data; loaded from `config.dataset` when None.
    mesh: the data-parallel mesh (default: every device, see `make_mesh`).
    progress: show a tqdm progress bar per epoch.
    on_epoch_end: called with each finished epoch's metrics, after its checkpoint is written.

  Returns:
    The trained model and its record (see `TrainResult`).

  Raises:
    ValueError: a batch size not divisible by the device count, a checkpoint from another config,
      or an unknown model, activation, schedule or optimizer.
    data.DataError: the dataset is missing.
  """
  mesh = make_mesh() if mesh is None else mesh
  _check_divisible(config, mesh)
  if dataset is None:
    dataset = data.load(config.dataset, data_dir=config.data_dir, train_limit=config.train_limit)
  train_images, train_labels = dataset.train_images, dataset.train_labels
  if config.train_limit is not None:
    train_images, train_labels = (
      train_images[: config.train_limit],
      train_labels[: config.train_limit],
    )
  steps_per_epoch = len(train_labels) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{len(train_labels)} training examples make no batch of {config.batch_size}")

  tx = make_optimizer(config, steps_per_epoch)

  @nnx.jit
  def create() -> tuple[nnx.Sequential, nnx.Optimizer]:
    # Made under jit, the state is born replicated over the mesh, on one host or many.
    model = build_model(config, train_images.shape[1:], dataset.num_classes)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    state = nnx.state((model, optimizer))
    nnx.update(
      (model, optimizer), jax.lax.with_sharding_constraint(state, NamedSharding(mesh, P()))
    )
    return model, optimizer

  model, optimizer = create()

  history: list[dict[str, Any]] = []
  manager = None
  if workdir is not None:
    manager = _checkpoint_manager(Path(workdir))
    if manager.latest_step() is not None:
      restored = manager.restore(
        manager.latest_step(),
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(nnx.state((model, optimizer))),
          meta=ocp.args.JsonRestore(),
        ),
      )
      if restored["meta"]["config"] != config.to_json():
        raise ValueError(
          f"{workdir} holds a checkpoint of another config: {restored['meta']['config']}"
        )
      nnx.update((model, optimizer), restored["state"])
      history = restored["meta"]["history"]

  compile_time, first_epoch = 0.0, len(history)
  test = None
  for epoch in range(first_epoch, config.epochs):
    model.train()
    order = np.random.default_rng([config.seed, epoch]).permutation(len(train_labels))
    loss_sum, confusion = 0.0, 0
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = tqdm(
      range(steps_per_epoch),
      desc=f"{config.activation} seed {config.seed} epoch {epoch + 1}/{config.epochs}",
      disable=not progress,
      leave=False,
      unit="step",
    )
    for step in bar:
      rows = order[step * config.batch_size : (step + 1) * config.batch_size]
      images, labels = (_global_batch(mesh, a[rows]) for a in (train_images, train_labels))
      loss, cm = train_step(model, optimizer, images, labels)
      loss_sum, confusion = loss_sum + loss, confusion + cm
      if step == 0 and epoch == first_epoch:
        jax.block_until_ready(loss)
        first_step = time.perf_counter() - start, time.process_time() - cpu_start
      if progress and step % 50 == 0:
        bar.set_postfix(loss=f"{float(_to_host(loss)):.3f}")
    confusion = _to_host(confusion)
    epoch_time, cpu_time = time.perf_counter() - start, time.process_time() - cpu_start
    if epoch == first_epoch:
      # The first step traced and compiled train_step (unless jit's cache had it from a run of
      # the same model and optimizer): its excess over an average step is compilation.
      rest = max(steps_per_epoch - 1, 1)
      compile_time = max(first_step[0] - (epoch_time - first_step[0]) / rest, 0.0)
      epoch_time -= compile_time
      cpu_time -= max(first_step[1] - (cpu_time - first_step[1]) / rest, 0.0)

    model.eval()
    start = time.perf_counter()
    test = evaluate(
      model,
      dataset.test_images,
      dataset.test_labels,
      batch_size=config.eval_batch_size,
      mesh=mesh,
    )
    train = metrics_from_confusion(confusion)
    history.append(
      {
        "epoch": epoch + 1,
        "train_loss": float(_to_host(loss_sum)) / steps_per_epoch,
        "train_accuracy": train["accuracy"],
        "train_macro_f1": train["macro_f1"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "epoch_time_s": epoch_time,
        "epoch_cpu_time_s": cpu_time,
        "eval_time_s": time.perf_counter() - start,
      }
    )
    if manager is not None:
      manager.save(
        epoch + 1,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(nnx.state((model, optimizer))),
          meta=ocp.args.JsonSave({"config": config.to_json(), "history": history}),
        ),
      )
      manager.wait_until_finished()  # an interruption from here on loses no finished epoch
    if on_epoch_end is not None:
      on_epoch_end(history[-1])
  if manager is not None:
    manager.close()

  model.eval()
  if test is None:  # every epoch was restored from the checkpoint
    test = evaluate(
      model,
      dataset.test_images,
      dataset.test_labels,
      batch_size=config.eval_batch_size,
      mesh=mesh,
    )
  trainable, frozen = count_params(model)
  record = {
    "activation": config.activation,
    "seed": config.seed,
    "epochs": history,
    "test_accuracy": test["accuracy"],
    "test_macro_f1": test["macro_f1"],
    "test_loss": test["loss"],
    "test_per_class_f1": test["per_class_f1"],
    "test_confusion_matrix": test["confusion_matrix"],
    "epoch_time_s": float(np.mean([h["epoch_time_s"] for h in history])),
    "epoch_cpu_time_s": float(np.mean([h["epoch_cpu_time_s"] for h in history])),
    "compile_time_s": compile_time,
    "params": trainable,
    "non_trainable_params": frozen,
    "devices": mesh.devices.size,
    "config": config.to_json(),
  }
  return TrainResult(model, record)


# --------------------------------------------------------------------------------------------------
# Sweeps: a grid of (activation, seed) runs into one results.json


def _write_json(path: Path, obj: Any) -> None:
  """Writes JSON under a temporary name first, so an interruption never leaves half a file."""
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(obj, indent=2) + "\n")
  os.replace(tmp, path)


def run_sweep(
  base: Config,
  activations: Sequence[str],
  seeds: Sequence[int],
  out_dir: str | os.PathLike[str],
  *,
  dataset: data.Dataset,
  metadata: Mapping[str, Any],
  resume: bool = False,
  mesh: Mesh | None = None,
  progress: bool = False,
  baseline: str = "relu",
  log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Trains every (activation, seed), seed by seed, into `out_dir`/results.json.

  results.json is rewritten after every finished run, with its `summary` (`summarize_runs`), so an
  interrupted sweep loses at most the epochs since the last checkpoint: with `resume`, finished
  runs are skipped and the interrupted one resumes from `out_dir`/checkpoints/<activation>-seed<s>.

  Args:
    base: the config of every run; activation and seed are replaced.
    activations: names from `mish_jax.ACTIVATIONS`.
    seeds: one run per seed and activation.
    out_dir: the output folder (created).
    dataset: the data.
    metadata: stored under "metadata" (e.g. `environment(...)`); kept from the first session on
      resume, with the resuming one appended to its "resumed" list.
    resume: continue the sweep that `out_dir` holds.
    mesh: the data-parallel mesh (default: every device).
    progress: tqdm progress bars.
    baseline: the activation the others are tested against.
    log: where one line per finished run goes.

  Returns:
    The results: {"metadata", "runs", "summary", "wall_time_s"}; the wall time is that of the
    finished runs, summed over resumed sessions.

  Raises:
    ValueError: `out_dir` holds a sweep of another config.
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  results_path = out_dir / "results.json"
  results: dict[str, Any] = {"metadata": dict(metadata), "runs": [], "summary": {}}
  if resume and results_path.exists():
    results = json.loads(results_path.read_text())
    if results["metadata"].get("config") != metadata.get("config"):
      raise ValueError(
        f"{out_dir} holds a sweep of another config ({results['metadata'].get('config')}); "
        "resume with the same flags or choose another --out"
      )
    results["metadata"].setdefault("resumed", []).append(
      {key: metadata.get(key) for key in ("date", "command")}
    )
  done = {(run["activation"], run["seed"]) for run in results["runs"]}
  start, wall_time = time.perf_counter(), results.get("wall_time_s", 0.0)
  results["wall_time_s"] = wall_time
  if jax.process_index() == 0:  # the metadata, "resumed" included, even if nothing is left to run
    _write_json(results_path, results)
  for seed in seeds:
    for activation in activations:
      if (activation, seed) in done:
        log(f"{activation} seed {seed}: done already, skipped")
        continue
      config = dataclasses.replace(base, activation=activation, seed=seed)

      def log_epoch(metrics: Mapping[str, Any], name: str = f"{activation} seed {seed}") -> None:
        log(
          f"{name} epoch {metrics['epoch']}/{base.epochs}: train loss {metrics['train_loss']:.4f}, "
          f"test accuracy {metrics['test_accuracy']:.2%}, {metrics['epoch_time_s']:.1f} s"
        )

      record = train_and_evaluate(
        config,
        out_dir / "checkpoints" / f"{activation}-seed{seed}",
        dataset=dataset,
        mesh=mesh,
        progress=progress,
        on_epoch_end=log_epoch,
      ).record
      results["runs"].append(record)
      results["summary"] = summarize_runs(results["runs"], baseline)
      results["wall_time_s"] = wall_time + time.perf_counter() - start
      if jax.process_index() == 0:
        _write_json(results_path, results)
      compiled = record["compile_time_s"]
      log(
        f"{activation} seed {seed}: test accuracy {record['test_accuracy']:.2%}, macro-F1 "
        f"{record['test_macro_f1']:.4f}, {record['epoch_time_s']:.1f} s/epoch "
        + (f"(+{compiled:.1f} s compile)" if compiled >= 0.1 else "(train step from jit's cache)")
      )
  return results


# --------------------------------------------------------------------------------------------------
# Statistics


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
  """Mean, sample standard deviation and a t-distribution confidence interval of the mean.

  Args:
    values: the samples (e.g. test accuracies over seeds).
    confidence: the interval's coverage.

  Returns:
    {"n", "mean", "std", "ci_low", "ci_high", "reason"}: with fewer than 2 values, std and the
    interval are None and "reason" says why; otherwise "reason" is None.
  """
  x = np.asarray(values, np.float64)
  if len(x) == 0:
    return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None, "reason": "no runs"}
  result = {"n": len(x), "mean": float(x.mean()), "std": None, "ci_low": None, "ci_high": None}
  if len(x) < 2:
    return {**result, "reason": "fewer than 2 runs: no spread to estimate"}
  std = float(x.std(ddof=1))
  half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)) * std / math.sqrt(len(x))
  return {
    **result,
    "std": std,
    "ci_low": result["mean"] - half,
    "ci_high": result["mean"] + half,
    "reason": None,
  }


def welch_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
  """Welch's two-sided t-test of mean(a) == mean(b) (`scipy.stats.ttest_ind(equal_var=False)`).

  Returns:
    {"t", "p_value", "reason"}: t and p are None, with the reason, when either sample has fewer
    than 2 values or both have zero variance (the test is then undefined).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if min(len(a), len(b)) < 2:
    return {"t": None, "p_value": None, "reason": "fewer than 2 runs in a group"}
  if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
    return {"t": None, "p_value": None, "reason": "zero variance in both groups"}
  result = stats.ttest_ind(a, b, equal_var=False)
  return {"t": float(result.statistic), "p_value": float(result.pvalue), "reason": None}


def summarize_runs(runs: Sequence[Mapping[str, Any]], baseline: str = "relu") -> dict[str, Any]:
  """Summarizes runs per activation, in order of first appearance.

  Args:
    runs: records of `train_and_evaluate`.
    baseline: the activation the others are compared with.

  Returns:
    Per activation: "n"; "test_accuracy" and "test_macro_f1" (`mean_ci`); for the others,
    "test_accuracy_vs_<baseline>" and "test_macro_f1_vs_<baseline>" (`welch_test`, or None with a
    reason when the baseline has no runs); "epoch_time_s" and "epoch_cpu_time_s" (means), each
    also relative to the baseline's ("..._vs_<baseline>", None without it); "compile_time_s"
    (the largest: later runs of a model find train_step in jit's cache).
  """
  groups: dict[str, list[Mapping[str, Any]]] = {}
  for run in runs:
    groups.setdefault(run["activation"], []).append(run)

  def mean(group: Sequence[Mapping[str, Any]], key: str) -> float:
    return float(np.mean([run[key] for run in group]))

  base = groups.get(baseline, [])
  summary = {}
  for activation, group in groups.items():
    entry: dict[str, Any] = {"n": len(group)}
    for metric in ("test_accuracy", "test_macro_f1"):
      values = [run[metric] for run in group]
      entry[metric] = mean_ci(values)
      if not base:
        entry[f"{metric}_vs_{baseline}"] = {
          "t": None,
          "p_value": None,
          "reason": "no baseline runs",
        }
      elif activation != baseline:
        entry[f"{metric}_vs_{baseline}"] = welch_test(values, [run[metric] for run in base])
    for key in ("epoch_time_s", "epoch_cpu_time_s"):
      entry[key] = mean(group, key)
      entry[f"{key.removesuffix('_s')}_vs_{baseline}"] = (
        entry[key] / mean(base, key) if base else None
      )
    entry["compile_time_s"] = max(run["compile_time_s"] for run in group)
    summary[activation] = entry
  return summary


# --------------------------------------------------------------------------------------------------
# Reports


def environment(argv: Sequence[str], config: Mapping[str, Any]) -> dict[str, Any]:
  """What a result depends on: devices, library versions, date, command line and config."""
  device = jax.devices()[0]
  return {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "command": " ".join(argv),
    "config": dict(config),
    "device": f"{device.platform}: {device.device_kind}",
    "device_count": jax.device_count(),
    "process_count": jax.process_count(),
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "platform": platform.platform(),
    "versions": {
      "jax": jax.__version__,
      "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "orbax-checkpoint": _version("orbax-checkpoint"),
      "numpy": np.__version__,
      "mish-jax": mish_jax.__version__,
    },
    "executable": sys.executable,
  }


def _version(distribution: str) -> str | None:
  from importlib import metadata

  try:
    return metadata.version(distribution)
  except metadata.PackageNotFoundError:
    return None


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
  """A GitHub Markdown table; cells are written with `str`."""
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def save_figure(fig: plt.Figure, path: str | os.PathLike[str], dpi: int = 120) -> None:
  """Lays out `fig`, writes it to `path` and closes it."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def plot_learning_curves(runs: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
  """Train loss, test loss and test accuracy per epoch: mean over seeds, min-max band."""
  panels = (
    ("train_loss", "train loss"),
    ("test_loss", "test loss"),
    ("test_accuracy", "test accuracy"),
  )
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
  activations = list(dict.fromkeys(run["activation"] for run in runs))
  for ax, (key, title) in zip(axes, panels, strict=True):
    for activation in activations:
      curves = [[h[key] for h in run["epochs"]] for run in runs if run["activation"] == activation]
      length = min(map(len, curves))
      values = np.array([c[:length] for c in curves])
      epochs = np.arange(1, length + 1)
      (line,) = ax.plot(epochs, values.mean(0), marker="o", label=f"{activation} (n={len(curves)})")
      ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    ax.set(title=title, xlabel="epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
  axes[0].legend()
  save_figure(fig, path)


def plot_class_counts(dataset: data.Dataset, path: str | os.PathLike[str]) -> None:
  """Bars of the examples per class in the train and test splits."""
  fig, ax = plt.subplots(figsize=(8, 4))
  positions = np.arange(dataset.num_classes)
  for offset, split in ((-0.2, "train"), (0.2, "test")):
    counts = np.bincount(getattr(dataset, f"{split}_labels"), minlength=dataset.num_classes)
    ax.bar(positions + offset, counts, width=0.4, label=f"{split} ({counts.sum():,})")
  ax.set_xticks(positions, dataset.class_names, rotation=45 if dataset.num_classes > 10 else 0)
  ax.set(title=f"{dataset.name}: examples per class", xlabel="class", ylabel="examples")
  ax.legend()
  save_figure(fig, path)


def plot_confusion_matrices(
  runs: Sequence[Mapping[str, Any]], class_names: Sequence[str], path: str | os.PathLike[str]
) -> None:
  """One test confusion matrix per activation, summed over its seeds; the diagonal is masked so
  that the errors stand out."""
  activations = list(dict.fromkeys(run["activation"] for run in runs))
  fig, axes = plt.subplots(1, len(activations), figsize=(5 * len(activations), 4.6), squeeze=False)
  for ax, activation in zip(axes[0], activations, strict=True):
    group = [run for run in runs if run["activation"] == activation]
    confusion = np.sum([run["test_confusion_matrix"] for run in group], axis=0)
    errors = np.where(np.eye(len(confusion), dtype=bool), 0, confusion)
    image = ax.imshow(errors, cmap="Reds")
    for (i, j), count in np.ndenumerate(confusion):
      if count:
        ax.text(j, i, str(count), ha="center", va="center", fontsize=6)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, fontsize=7)
    ax.set_yticks(ticks, class_names, fontsize=7)
    ax.set(title=f"{activation} (sum of {len(group)} seeds)", xlabel="predicted", ylabel="true")
    fig.colorbar(image, ax=ax, fraction=0.046, label="errors")
  save_figure(fig, path)


def plot_activations(names: Sequence[str], path: str | os.PathLike[str]) -> None:
  """Each activation and its derivative (`jax.grad`) over [-6, 6]."""
  x = jnp.linspace(-6.0, 6.0, 601)
  fig, (value_ax, grad_ax) = plt.subplots(1, 2, figsize=(10, 4))
  for name in names:
    f = mish_jax.get_activation(name)
    value_ax.plot(x, f(x), label=name)
    grad_ax.plot(x, jax.vmap(jax.grad(f))(x), label=name)
  value_ax.set(title="f(x)", xlabel="x")
  grad_ax.set(title="f'(x) (jax.grad)", xlabel="x")
  for ax in (value_ax, grad_ax):
    ax.axhline(0, color="gray", lw=0.5)
    ax.grid(alpha=0.3)
    ax.legend()
  save_figure(fig, path)
