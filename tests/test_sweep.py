"""Tests of experiments/sweep.py: the sweep loop, its results file and resuming it."""

import dataclasses
import json

import pytest
from experiment_testing import SMALL, synthetic_dataset

from experiments import store, sweep
from experiments.cli import Fault


def test_run_sweep_writes_results_and_skips_finished_runs_on_resume(tmp_path):
  dataset = synthetic_dataset()
  config = dataclasses.replace(SMALL, epochs=1)
  metadata = {"config": config.to_json(), "date": "today", "command": "test"}
  lines = []
  results = sweep.train_grid(
    config, ["relu", "mish"], [0], tmp_path, dataset=dataset, metadata=metadata, log=lines.append
  )
  on_disk = store.read_json(tmp_path / "results.json", start_over="")
  assert on_disk == json.loads(json.dumps(results))
  assert [(r["activation"], r["seed"]) for r in on_disk["runs"]] == [("relu", 0), ("mish", 0)]
  assert set(on_disk["summary"]) == {"relu", "mish"}
  assert any("epoch 1/1" in line for line in lines)

  lines.clear()
  again = sweep.train_grid(
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
  assert store.read_json(tmp_path / "results.json", start_over="") == json.loads(json.dumps(again))

  other = {**metadata, "config": {**metadata["config"], "epochs": 7}}
  with pytest.raises(Fault, match=r"metadata.config.epochs 1 \(now 7\)"):
    sweep.train_grid(config, ["relu"], [0], tmp_path, dataset=dataset, metadata=other, resume=True)
