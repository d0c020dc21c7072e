"""Tests of experiments/training.py: models, metrics, statistics, training, sharding and resume."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from experiments import data, training

REPO_ROOT = Path(__file__).resolve().parents[1]

# A small CNN and short runs: what these tests check does not depend on the size.
SMALL = training.Config(
  model_options={"features": (8, 16), "dense": 32},
  epochs=2,
  batch_size=32,
  eval_batch_size=64,
  learning_rate=3e-3,
)


def synthetic_dataset(num_train: int = 256, num_test: int = 100, seed: int = 0) -> data.Dataset:
  """Noisy 28x28 images whose class is the position of a bright 6x6 square: learnable fast."""
  rng = np.random.default_rng(seed)

  def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 10, n).astype(np.int32)
    images = rng.uniform(0, 0.3, (n, 28, 28, 1)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
      row, col = divmod(int(label), 5)
      image[2 + 12 * row : 8 + 12 * row, 1 + 5 * col : 7 + 5 * col] = 1.0
    return images, labels

  train_images, train_labels = split(num_train)
  test_images, test_labels = split(num_test)
  return data.Dataset(
    name="synthetic",
    train_images=train_images,
    train_labels=train_labels,
    test_images=test_images,
    test_labels=test_labels,
    class_names=tuple(str(i) for i in range(10)),
    source="synthetic",
  )


def _without_times(record: dict) -> dict:
  """A record with its wall-clock fields removed, for comparing runs."""
  timed = ("epoch_time_s", "epoch_cpu_time_s", "eval_time_s", "compile_time_s")
  record = {k: v for k, v in record.items() if k not in timed}
  record["epochs"] = [{k: v for k, v in e.items() if k not in timed} for e in record["epochs"]]
  return record


# --------------------------------------------------------------------------------------------------
# Models


def _params_and_output_shape(build, input_shape):
  """Parameter counts and the output shape of `build()`, traced abstractly: nothing compiles."""

  def output():
    model = build()
    model.eval()
    return model(jnp.zeros(input_shape))

  return training.count_params(nnx.eval_shape(build)), nnx.eval_shape(output).shape


def test_cnn_parameter_count_and_output_shape():
  params, shape = _params_and_output_shape(
    lambda: training.cnn(jax.nn.relu, rngs=nnx.Rngs(0)), (4, 28, 28, 1)
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
    lambda: training.cnn(
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
    lambda: training.mlp(jax.nn.relu, rngs=nnx.Rngs(0), hidden=(64,) * 5, dropout=0.1),
    (3, 28, 28, 1),
  )
  assert params == (784 * 64 + 64 + 4 * (64 * 64 + 64) + 64 * 10 + 10, 0)
  assert shape == (3, 10)


def test_model_receives_the_activation_callable():
  calls = []

  def spy(x):
    calls.append(x.shape)
    return jax.nn.relu(x)

  _params_and_output_shape(lambda: training.cnn(spy, rngs=nnx.Rngs(0)), (1, 28, 28, 1))
  assert calls == [(1, 26, 26, 32), (1, 11, 11, 64), (1, 128)]


def test_build_model_rejects_unknown_names():
  with pytest.raises(ValueError, match="unknown model"):
    training.build_model(dataclasses.replace(SMALL, model="resnet"), (28, 28, 1), 10)
  with pytest.raises(ValueError, match="relu"):  # mish_jax lists the valid names
    training.build_model(dataclasses.replace(SMALL, activation="tanhh"), (28, 28, 1), 10)


def test_model_summary_lists_layers_shapes_and_params():
  model = training.cnn(jax.nn.relu, rngs=nnx.Rngs(0))
  tracked = nnx.Any(nnx.Param, nnx.RngCount)
  state_before = jax.tree.map(np.asarray, nnx.state(model, tracked))
  summary = training.model_summary(model, (28, 28, 1))
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
    training.max_pool_2x2(x), nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
  )


# --------------------------------------------------------------------------------------------------
# Metrics and statistics


def test_metrics_from_confusion():
  confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2: no examples, no predictions
  metrics = training.metrics_from_confusion(confusion)
  assert metrics["accuracy"] == pytest.approx(8 / 11)
  f1_0 = 2 * 5 / (2 * 5 + 2 + 1)
  f1_1 = 2 * 3 / (2 * 3 + 1 + 2)
  np.testing.assert_allclose(metrics["per_class_f1"], [f1_0, f1_1, 0.0])
  assert metrics["macro_f1"] == pytest.approx((f1_0 + f1_1) / 3)


def test_confusion_matrix_counts_and_weights():
  labels, predictions = jnp.array([0, 1, 1, 2]), jnp.array([0, 1, 0, 2])
  np.testing.assert_array_equal(
    training.confusion_matrix(labels, predictions, 3, weights=jnp.array([1.0, 1.0, 1.0, 0.0])),
    [[1, 0, 0], [1, 1, 0], [0, 0, 0]],
  )


def test_mean_ci_matches_the_t_interval():
  values = [0.9912, 0.9905, 0.9921, 0.9899, 0.9917]
  result = training.mean_ci(values)
  low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
  assert result["n"] == 5
  assert result["mean"] == pytest.approx(np.mean(values))
  assert result["std"] == pytest.approx(np.std(values, ddof=1))
  assert (result["ci_low"], result["ci_high"]) == pytest.approx((low, high))
  assert result["reason"] is None


def test_mean_ci_of_fewer_than_two_values():
  one = training.mean_ci([0.99])
  assert one["mean"] == 0.99 and one["std"] is None and one["ci_low"] is None
  assert "fewer than 2" in one["reason"]
  assert training.mean_ci([])["mean"] is None


def test_welch_test_on_known_numbers():
  a, b = [0.9912, 0.9905, 0.9921, 0.9899, 0.9917], [0.9889, 0.9901, 0.9880, 0.9895]
  result = training.welch_test(a, b)
  reference = stats.ttest_ind(a, b, equal_var=False)
  assert result["p_value"] == pytest.approx(reference.pvalue)
  assert result["t"] == pytest.approx(reference.statistic)
  # And by hand: Welch's t with Welch-Satterthwaite degrees of freedom.
  va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
  dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  assert result["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), dof))


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on a constant group
def test_welch_test_undefined_cases_give_none_with_a_reason():
  assert training.welch_test([0.99], [0.98, 0.97]) == {
    "t": None,
    "p_value": None,
    "reason": "fewer than 2 runs in a group",
  }
  constant = training.welch_test([0.99, 0.99], [0.98, 0.98])
  assert constant["p_value"] is None and "zero variance" in constant["reason"]
  # One constant group is fine: Welch uses the other's variance.
  assert training.welch_test([0.99, 0.99], [0.98, 0.97])["p_value"] is not None


def test_summarize_runs():
  def run(activation, accuracy, seconds):
    return {
      "activation": activation,
      "test_accuracy": accuracy,
      "test_macro_f1": accuracy - 0.001,
      "epoch_time_s": seconds,
      "epoch_cpu_time_s": 2 * seconds,
      "compile_time_s": seconds / 10,
    }

  runs = [run("relu", 0.990, 10), run("relu", 0.991, 12), run("mish", 0.992, 15)]
  summary = training.summarize_runs(runs)
  assert list(summary) == ["relu", "mish"]
  assert summary["relu"]["test_accuracy"]["mean"] == pytest.approx(0.9905)
  assert "test_accuracy_vs_relu" not in summary["relu"]
  assert summary["mish"]["epoch_time_vs_relu"] == pytest.approx(15 / 11)
  assert summary["mish"]["epoch_cpu_time_s"] == 30
  assert summary["mish"]["epoch_cpu_time_vs_relu"] == pytest.approx(15 / 11)
  assert summary["relu"]["compile_time_s"] == 1.2  # the run that compiled
  assert summary["mish"]["test_accuracy_vs_relu"]["p_value"] is None  # one mish run
  no_baseline = training.summarize_runs(runs[2:])
  assert no_baseline["mish"]["test_accuracy_vs_relu"]["reason"] == "no baseline runs"
  assert no_baseline["mish"]["epoch_time_vs_relu"] is None


# --------------------------------------------------------------------------------------------------
# Training


def test_training_is_deterministic_and_learns_synthetic_data():
  dataset = synthetic_dataset()
  first = training.train_and_evaluate(SMALL, None, dataset=dataset).record
  second = training.train_and_evaluate(SMALL, None, dataset=dataset).record
  assert _without_times(first) == _without_times(second)
  assert first["test_accuracy"] > 0.5  # chance is 0.1
  other_seed = training.train_and_evaluate(
    dataclasses.replace(SMALL, seed=1), None, dataset=dataset
  )
  assert other_seed.record["epochs"][0]["train_loss"] != first["epochs"][0]["train_loss"]

  assert len(first["epochs"]) == 2
  assert first["test_accuracy"] == first["epochs"][-1]["test_accuracy"]
  assert np.sum(first["test_confusion_matrix"]) == len(dataset.test_labels)
  assert len(first["test_per_class_f1"]) == 10
  assert first["params"] == training.count_params(training.build_model(SMALL, (28, 28, 1), 10))[0]


def test_resume_after_an_interruption_continues_where_it_stopped(tmp_path):
  dataset = synthetic_dataset()
  finished = []

  def interrupt_after_epoch_1(metrics):
    finished.append(metrics["epoch"])
    if metrics["epoch"] == 1:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    training.train_and_evaluate(
      SMALL, tmp_path, dataset=dataset, on_epoch_end=interrupt_after_epoch_1
    )
  resumed = training.train_and_evaluate(
    SMALL, tmp_path, dataset=dataset, on_epoch_end=interrupt_after_epoch_1
  ).record
  assert finished == [1, 2]  # epoch 1 was not redone
  assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
  # Model, optimizer, dropout RNG and shuffling all continue exactly: as if never interrupted.
  uninterrupted = training.train_and_evaluate(SMALL, None, dataset=dataset).record
  assert _without_times(resumed) == _without_times(uninterrupted)

  with pytest.raises(ValueError, match="another config"):
    training.train_and_evaluate(dataclasses.replace(SMALL, seed=5), tmp_path, dataset=dataset)


_SHARDED_SCRIPT = textwrap.dedent(
  """
  import dataclasses, json, sys
  import jax
  sys.path.insert(0, sys.argv[1])
  from experiments import training
  from tests.test_training import SMALL, synthetic_dataset, _without_times

  assert jax.device_count() == 8, jax.devices()
  dataset = synthetic_dataset()
  records = {}
  for devices in (1, 8):
    mesh = training.make_mesh(jax.devices()[:devices])
    records[devices] = _without_times(
      training.train_and_evaluate(SMALL, None, dataset=dataset, mesh=mesh).record
    )
  try:
    training.train_and_evaluate(
      dataclasses.replace(SMALL, batch_size=36), None, dataset=dataset
    )
  except ValueError as err:
    error = str(err)
  print(json.dumps({"records": records, "error": error}))
  """
)


def test_sharded_training_equals_one_device():
  # XLA_FLAGS must be set before JAX starts: a fresh interpreter.
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = subprocess.run(
    [sys.executable, "-c", _SHARDED_SCRIPT, str(REPO_ROOT)],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  one, eight = result["records"]["1"], result["records"]["8"]
  assert one["devices"] == 1 and eight["devices"] == 8
  for key in ("test_accuracy", "test_macro_f1", "test_loss"):
    assert eight[key] == pytest.approx(one[key], abs=1e-5)
  for e1, e8 in zip(one["epochs"], eight["epochs"], strict=True):
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
      assert e8[key] == pytest.approx(e1[key], abs=1e-5), key
  assert "batch_size 36 is not divisible by the 8 devices" in result["error"]


_MULTI_HOST_SCRIPT = textwrap.dedent(
  """
  import json, sys
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(sys.argv[2], num_processes=2, process_id=int(sys.argv[3]))
  sys.path.insert(0, sys.argv[1])
  from experiments import training
  from tests.test_training import SMALL, synthetic_dataset, _without_times

  assert jax.device_count() == 2 and jax.local_device_count() == 1
  record = training.train_and_evaluate(SMALL, None, dataset=synthetic_dataset()).record
  print(json.dumps(_without_times(record)))
  """
)


@pytest.mark.slow
def test_two_hosts_equal_one_device():
  with socket.socket() as probe:  # a free port for the coordinator
    probe.bind(("localhost", 0))
    address = f"localhost:{probe.getsockname()[1]}"
  hosts = [
    subprocess.Popen(
      [sys.executable, "-c", _MULTI_HOST_SCRIPT, str(REPO_ROOT), address, str(i)],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [host.communicate(timeout=600) for host in hosts]
  for host, (_, err) in zip(hosts, outputs, strict=True):
    assert host.returncode == 0, err[-3000:]
  records = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert records[0] == records[1]  # both hosts see the same global results
  assert records[0]["devices"] == 2
  one = _without_times(training.train_and_evaluate(SMALL, None, dataset=synthetic_dataset()).record)
  for key in ("test_accuracy", "test_loss"):
    assert records[0][key] == pytest.approx(one[key], abs=1e-5)
  for e2, e1 in zip(records[0]["epochs"], one["epochs"], strict=True):
    assert e2["train_loss"] == pytest.approx(e1["train_loss"], abs=1e-5)


def test_run_sweep_writes_results_and_skips_finished_runs_on_resume(tmp_path):
  dataset = synthetic_dataset()
  config = dataclasses.replace(SMALL, epochs=1)
  metadata = {"config": config.to_json(), "date": "today", "command": "test"}
  lines = []
  results = training.run_sweep(
    config, ["relu", "mish"], [0], tmp_path, dataset=dataset, metadata=metadata, log=lines.append
  )
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk == json.loads(json.dumps(results))
  assert [(r["activation"], r["seed"]) for r in on_disk["runs"]] == [("relu", 0), ("mish", 0)]
  assert set(on_disk["summary"]) == {"relu", "mish"}
  assert any("epoch 1/1" in line for line in lines)

  lines.clear()
  again = training.run_sweep(
    config,
    ["relu", "mish"],
    [0],
    tmp_path,
    dataset=dataset,
    metadata=metadata,
    resume=True,
    log=lines.append,
  )
  assert lines == ["relu seed 0: done already, skipped", "mish seed 0: done already, skipped"]
  assert again["runs"] == results["runs"]
  assert again["metadata"]["resumed"] == [{"date": "today", "command": "test"}]
  assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(again))

  other = {**metadata, "config": {**metadata["config"], "epochs": 7}}
  with pytest.raises(ValueError, match="another config"):
    training.run_sweep(
      config, ["relu"], [0], tmp_path, dataset=dataset, metadata=other, resume=True
    )


@pytest.mark.slow
def test_real_mnist_slice_learns():
  try:
    dataset = data.load("mnist", train_limit=2000)
  except data.DataError as err:
    pytest.skip(f"MNIST is not here: {err}")
  config = dataclasses.replace(training.Config(), epochs=1)
  record = training.train_and_evaluate(config, None, dataset=dataset).record
  assert record["params"] == 225_034
  assert record["test_accuracy"] > 0.8  # chance is 0.1; 31 steps of batch 64 reach about 0.9
  assert record["epochs"][0]["train_accuracy"] > 0.2


# --------------------------------------------------------------------------------------------------
# Plots


def test_plots_write_pngs(tmp_path):
  dataset = synthetic_dataset(num_train=64, num_test=20)
  run = {
    "activation": "relu",
    "epochs": [{"train_loss": 1.0, "test_loss": 0.9, "test_accuracy": 0.5}],
    "test_confusion_matrix": np.eye(10, dtype=int).tolist(),
  }
  training.plot_learning_curves([run, {**run, "activation": "mish"}], tmp_path / "curves.png")
  training.plot_class_counts(dataset, tmp_path / "counts.png")
  training.plot_confusion_matrices([run], dataset.class_names, tmp_path / "confusion.png")
  training.plot_activations(["relu", "mish"], tmp_path / "activations.png")
  for name in ("curves", "counts", "confusion", "activations"):
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
