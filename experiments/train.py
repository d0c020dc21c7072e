"""Training: `train_and_evaluate(config, workdir)` trains and tests one (activation, seed).

A `Config` is the run as data. Training uses Optax under `@nnx.jit`, data-parallel over every
device of a `jax.sharding.Mesh` (the batch sharded, the parameters replicated), checkpoints after
every epoch (`checkpoints.Checkpoints`) and resumes from the last one in `workdir`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

import mish_jax
from experiments import data, models, stats
from experiments.checkpoints import Checkpoints
from experiments.cli import Fault
from experiments.records import RunRecord

DATA_AXIS = "data"


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
  if config.model not in models.MODELS:
    raise ValueError(f"unknown model {config.model!r}: choose one of {', '.join(models.MODELS)}")
  activation = mish_jax.get_activation(config.activation)
  params_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  rngs = nnx.Rngs(params=params_key, dropout=dropout_key)
  return models.MODELS[config.model](
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


def confusion_matrix(
  labels: jax.Array, predictions: jax.Array, num_classes: int, weights: jax.Array | None = None
) -> jax.Array:
  """(num_classes, num_classes) int32 counts: rows are true labels, columns predictions."""
  counts = jnp.ones_like(labels) if weights is None else weights.astype(jnp.int32)
  return jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, predictions].add(counts)


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
    **stats.metrics_from_confusion(confusion),
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


@dataclasses.dataclass
class TrainResult:
  """What `train_and_evaluate` returns: the trained model, in eval mode, and its record."""

  model: nnx.Sequential
  record: RunRecord


def _restore(
  checkpoints: Checkpoints, config: Config, model: nnx.Module, optimizer: nnx.Optimizer
) -> list[dict[str, Any]]:
  """Restores the latest checkpoint into `model` and `optimizer`; returns its epoch history.

  Raises:
    Fault: the checkpoint is damaged, or was made with another config.
  """
  restored = checkpoints.restore(nnx.state((model, optimizer)))
  if restored is None:
    return []
  state, meta = restored
  if meta["config"] != config.to_json():
    keys = [k for k, v in config.to_json().items() if meta["config"].get(k) != v]
    raise Fault(
      f"{checkpoints.workdir} holds a checkpoint of another config (differs in "
      f"{', '.join(keys)}); resume with the same flags or choose another --out"
    )
  nnx.update((model, optimizer), state)
  return meta["history"]


def _without_compilation(
  epoch_s: tuple[float, float], first_step_s: tuple[float, float], steps: int
) -> tuple[float, float, float]:
  """(wall, CPU) seconds of an epoch without the first step's compilation, and the compilation.

  The first step traced and compiled train_step (unless jit's cache had it from a run of the same
  model and optimizer): its excess over an average step is compilation.
  """
  rest = max(steps - 1, 1)
  compile_s = max(first_step_s[0] - (epoch_s[0] - first_step_s[0]) / rest, 0.0)
  cpu_compile_s = max(first_step_s[1] - (epoch_s[1] - first_step_s[1]) / rest, 0.0)
  return epoch_s[0] - compile_s, epoch_s[1] - cpu_compile_s, compile_s


def train_and_evaluate(
  config: Config,
  workdir: str | Path | None,
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
    dataset: the data, already cut to `config.train_limit` (`data.Dataset.limited`); loaded from
      `config.dataset` when None.
    mesh: the data-parallel mesh (default: every device, see `make_mesh`).
    progress: show a tqdm progress bar per epoch.
    on_epoch_end: called with each finished epoch's metrics, after its checkpoint is written.

  Returns:
    The trained model and its record.

  Raises:
    ValueError: a batch size not divisible by the device count, a dataset of another size than
      `config.train_limit`, or an unknown model, activation, schedule or optimizer.
    Fault: the checkpoint in `workdir` is damaged or from another config.
    data.DataError: the dataset is missing.
  """
  mesh = make_mesh() if mesh is None else mesh
  _check_divisible(config, mesh)
  if dataset is None:
    dataset = data.load(config.dataset, data_dir=config.data_dir, train_limit=config.train_limit)
  train_images, train_labels = dataset.train_images, dataset.train_labels
  if config.train_limit is not None and len(train_labels) > config.train_limit:
    raise ValueError(
      f"{len(train_labels)} training examples, more than train_limit {config.train_limit}: "
      "pass dataset.limited(config.train_limit)"
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
  checkpoints = None if workdir is None else Checkpoints(Path(workdir))
  history = [] if checkpoints is None else _restore(checkpoints, config, model, optimizer)

  def test_model() -> dict[str, Any]:
    return evaluate(
      model,
      dataset.test_images,
      dataset.test_labels,
      batch_size=config.eval_batch_size,
      mesh=mesh,
    )

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
      epoch_time, cpu_time, compile_time = _without_compilation(
        (epoch_time, cpu_time), first_step, steps_per_epoch
      )

    model.eval()
    start = time.perf_counter()
    test = test_model()
    train = stats.metrics_from_confusion(confusion)
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
    if checkpoints is not None:
      checkpoints.save(
        epoch + 1,
        nnx.state((model, optimizer)),
        {"config": config.to_json(), "history": history},
      )
    if on_epoch_end is not None:
      on_epoch_end(history[-1])
  if checkpoints is not None:
    checkpoints.close()

  model.eval()
  if test is None:  # every epoch was restored from the checkpoint
    test = test_model()
  trainable, frozen = models.count_params(model)
  record = RunRecord(
    activation=config.activation,
    seed=config.seed,
    epochs=history,
    test_accuracy=test["accuracy"],
    test_macro_f1=test["macro_f1"],
    test_loss=test["loss"],
    test_per_class_f1=test["per_class_f1"],
    test_confusion_matrix=test["confusion_matrix"],
    epoch_time_s=float(np.mean([h["epoch_time_s"] for h in history])),
    epoch_cpu_time_s=float(np.mean([h["epoch_cpu_time_s"] for h in history])),
    compile_time_s=compile_time,
    params=trainable,
    non_trainable_params=frozen,
    devices=mesh.devices.size,
    config=config.to_json(),
  )
  return TrainResult(model, record)
