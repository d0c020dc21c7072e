"""Tests of experiments/train.py: determinism, resume, sharding over devices and hosts."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from experiment_testing import SMALL, synthetic_dataset, without_times

from experiments import data, models, train
from experiments.cli import Fault

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_training_is_deterministic_and_learns_synthetic_data():
  dataset = synthetic_dataset()
  first = train.train_and_evaluate(SMALL, None, dataset=dataset).record.to_json()
  second = train.train_and_evaluate(SMALL, None, dataset=dataset).record.to_json()
  assert without_times(first) == without_times(second)
  assert first["test_accuracy"] > 0.5  # chance is 0.1
  other_seed = train.train_and_evaluate(dataclasses.replace(SMALL, seed=1), None, dataset=dataset)
  assert other_seed.record.epochs[0]["train_loss"] != first["epochs"][0]["train_loss"]

  assert len(first["epochs"]) == 2
  assert first["test_accuracy"] == first["epochs"][-1]["test_accuracy"]
  assert np.sum(first["test_confusion_matrix"]) == len(dataset.test_labels)
  assert len(first["test_per_class_f1"]) == 10
  assert first["params"] == models.count_params(train.build_model(SMALL, (28, 28, 1), 10))[0]


def test_resume_after_an_interruption_continues_where_it_stopped(tmp_path):
  dataset = synthetic_dataset()
  finished = []

  def interrupt_after_epoch_1(metrics):
    finished.append(metrics["epoch"])
    if metrics["epoch"] == 1:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(SMALL, tmp_path, dataset=dataset, on_epoch_end=interrupt_after_epoch_1)
  resumed = train.train_and_evaluate(
    SMALL, tmp_path, dataset=dataset, on_epoch_end=interrupt_after_epoch_1
  ).record.to_json()
  assert finished == [1, 2]  # epoch 1 was not redone
  assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
  # Model, optimizer, dropout RNG and shuffling all continue exactly: as if never interrupted.
  uninterrupted = train.train_and_evaluate(SMALL, None, dataset=dataset).record.to_json()
  assert without_times(resumed) == without_times(uninterrupted)

  with pytest.raises(Fault, match="another config .differs in seed"):
    train.train_and_evaluate(dataclasses.replace(SMALL, seed=5), tmp_path, dataset=dataset)


_SHARDED_SCRIPT = textwrap.dedent(
  """
  import dataclasses, json, sys
  import jax
  sys.path.insert(0, sys.argv[1])
  from experiments import train
  sys.path.insert(0, sys.argv[1] + '/tests')
  from experiment_testing import SMALL, synthetic_dataset, without_times

  assert jax.device_count() == 8, jax.devices()
  dataset = synthetic_dataset()
  records = {}
  for devices in (1, 8):
    mesh = train.make_mesh(jax.devices()[:devices])
    records[devices] = without_times(
      train.train_and_evaluate(SMALL, None, dataset=dataset, mesh=mesh).record.to_json()
    )
  try:
    train.train_and_evaluate(
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
  from experiments import train
  sys.path.insert(0, sys.argv[1] + '/tests')
  from experiment_testing import SMALL, synthetic_dataset, without_times

  assert jax.device_count() == 2 and jax.local_device_count() == 1
  record = train.train_and_evaluate(SMALL, None, dataset=synthetic_dataset()).record
  print(json.dumps(without_times(record.to_json())))
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
  one = without_times(
    train.train_and_evaluate(SMALL, None, dataset=synthetic_dataset()).record.to_json()
  )
  for key in ("test_accuracy", "test_loss"):
    assert records[0][key] == pytest.approx(one[key], abs=1e-5)
  for e2, e1 in zip(records[0]["epochs"], one["epochs"], strict=True):
    assert e2["train_loss"] == pytest.approx(e1["train_loss"], abs=1e-5)


@pytest.mark.slow
def test_real_mnist_slice_learns():
  try:
    dataset = data.load("mnist", train_limit=2000)
  except data.DataError as err:
    pytest.skip(f"MNIST is not here: {err}")
  config = dataclasses.replace(train.Config(), epochs=1, train_limit=2000)
  record = train.train_and_evaluate(config, None, dataset=dataset).record
  assert record.params == 225_034
  assert record.test_accuracy > 0.8  # chance is 0.1; 31 steps of batch 64 reach about 0.9
  assert record.epochs[0]["train_accuracy"] > 0.2


def test_a_dataset_larger_than_the_train_limit_is_refused():
  with pytest.raises(ValueError, match="dataset.limited"):
    train.train_and_evaluate(
      dataclasses.replace(SMALL, train_limit=64), None, dataset=synthetic_dataset()
    )
