"""Tests of the command line of experiments/mnist.py: usage errors, --help and a tiny full run."""

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from experiment_testing import synthetic_dataset

from experiments import data, mnist, mnist_report, store

REPO_ROOT = Path(__file__).resolve().parents[1]


def _usage_error(capsys, argv: list[str]) -> str:
  """Runs main(argv), expecting exit status 2 (a usage error or a fault); returns its one line."""
  try:
    status = mnist.main(argv)
  except SystemExit as exit_info:  # argparse's errors exit; faults return
    status = exit_info.code
  assert status == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("python experiments/mnist.py: error: "), err
  return err


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--activations", "relu,tanhh"], "unknown activation 'tanhh': choose from relu, swish, mish"),
    (["--activations", ","], "unknown activation (none given)"),
    (["--epochs", "0"], "--epochs: must be a positive integer, not 0"),
    (["--seeds", "-2"], "--seeds: must be a positive integer, not -2"),
    (["--batch-size", "0"], "--batch-size: must be a positive integer, not 0"),
    (["--batch-size", "many"], "--batch-size: 'many' is not an integer"),
    (["--learning-rate", "-0.001"], "--learning-rate: must be a positive number"),
    (["--train-limit", "100", "--batch-size", "128"], "--train-limit 100 is smaller than"),
    (["--dataset", "cifar10"], "--dataset: invalid choice: 'cifar10'"),
  ],
)
def test_bad_flags_exit_2_with_one_line(capsys, tmp_path, argv, message):
  assert message in _usage_error(capsys, [*argv, "--out", str(tmp_path / "out")])


def test_unwritable_out_exits_2(capsys, tmp_path):
  blocker = tmp_path / "a-file"
  blocker.write_text("")
  assert "is not writable" in _usage_error(capsys, ["--out", str(blocker / "out")])


def test_out_with_a_run_needs_resume(capsys, tmp_path):
  (tmp_path / "results.json").write_text("{}")
  assert "pass --resume" in _usage_error(capsys, ["--out", str(tmp_path)])


def test_missing_data_exits_2(capsys, tmp_path, monkeypatch):
  def missing(*args, **kwargs):
    raise data.DataError("mnist is missing; run `python experiments/data.py fetch`")

  monkeypatch.setattr(data, "load", missing)
  err = _usage_error(capsys, ["--out", str(tmp_path / "out")])
  assert "mnist is missing; run `python experiments/data.py fetch`" in err


def test_usage_error_from_the_shell():
  proc = subprocess.run(
    [sys.executable, "experiments/mnist.py", "--seeds", "0"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
    "python experiments/mnist.py: error: argument --seeds: must be a positive integer, not 0 "
    "(see --help)"
  )


def test_batch_size_not_divisible_by_the_devices_exits_2(tmp_path):
  # XLA_FLAGS must be set before JAX starts: a fresh interpreter.
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = subprocess.run(
    [sys.executable, "experiments/mnist.py", "--batch-size", "12", "--out", str(tmp_path / "o")],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
    "python experiments/mnist.py: error: --batch-size 12 is not divisible by the 8 devices "
    "(see --help)"
  )


def test_help_explains_every_flag_and_the_default_run(capsys):
  with pytest.raises(SystemExit) as exit_info:
    mnist.main(["--help"])
  assert exit_info.value.code == 0
  text = " ".join(capsys.readouterr().out.split())
  for flag in [
    "--activations",
    "--seeds",
    "--epochs",
    "--batch-size",
    "--learning-rate",
    "--train-limit",
    "--dataset",
    "--data-dir",
    "--out",
    "--resume",
    "--quiet",
    "--distributed",
    "--coordinator-address",
    "--num-processes",
    "--process-id",
  ]:
    assert flag in text
  assert " ".join(mnist.expected_result().split()) in text
  assert "docs/mnist/report.md" in text and "%" in text  # the measured run, read from its report


def test_tiny_run_writes_results_report_and_plots(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(data, "load", lambda *args, **kwargs: synthetic_dataset())
  out = tmp_path / "run"
  argv = ["--activations", "relu,mish", "--seeds", "2", "--epochs", "1", "--batch-size", "64"]
  argv += ["--out", str(out), "--quiet"]
  assert mnist.main(argv) == 0

  results = store.read_json(out / "results.json", start_over="")
  assert [(r["activation"], r["seed"]) for r in results["runs"]] == [
    ("relu", 0),
    ("mish", 0),
    ("relu", 1),
    ("mish", 1),
  ]
  run = results["runs"][0]
  for key in ("epochs", "test_accuracy", "test_macro_f1", "epoch_time_s", "compile_time_s"):
    assert key in run
  assert run["params"] == 225_034
  assert set(run["epochs"][0]) >= {"train_loss", "train_accuracy", "train_macro_f1"}
  mish = results["summary"]["mish"]
  assert mish["test_accuracy"]["n"] == 2 and mish["test_accuracy"]["ci_low"] is not None
  assert "p_value" in mish["test_accuracy_vs_relu"]
  assert mish["epoch_time_vs_relu"] > 0
  meta = results["metadata"]
  assert meta["command"].startswith("python experiments/mnist.py --activations relu,mish")
  assert meta["config"]["epochs"] == 1 and meta["config"]["seeds"] == 2
  assert {"jax", "flax", "optax"} <= set(meta["versions"]) and meta["device"] and meta["date"]

  report = (out / "report.md").read_text()
  for section in ("## Verdict", "## Test results", "## Data", "## Model", "## Plots"):
    assert section in report
  assert "mish vs relu:" in report and "Welch p = " in report
  assert "Total params: 225,034" in report
  for name in mnist_report.PLOTS:
    assert f"]({name})" in report
    assert plt.imread(out / name).ndim == 3

  # --resume finds every run done and trains nothing.
  capsys.readouterr()
  assert mnist.main([*argv[:-1], "--resume"]) == 0
  assert capsys.readouterr().out.count("done already, skipped") == 4
  assert store.read_json(out / "results.json", start_over="")["runs"] == results["runs"]
