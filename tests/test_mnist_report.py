"""Tests of experiments/mnist_report.py: the plots (the report itself: test_mnist_cli)."""

import dataclasses

from experiment_testing import run_record, synthetic_dataset

from experiments import mnist_report


def test_plots_write_pngs(tmp_path):
  dataset = synthetic_dataset(num_train=64, num_test=20)
  run = run_record("relu", 0.5, 1.0)
  mnist_report.plot_learning_curves(
    [run, dataclasses.replace(run, activation="mish")], tmp_path / "curves.png"
  )
  mnist_report.plot_class_counts(dataset, tmp_path / "counts.png")
  mnist_report.plot_confusion_matrices([run], dataset.class_names, tmp_path / "confusion.png")
  mnist_report.plot_activations(["relu", "mish"], tmp_path / "activations.png")
  for name in ("curves", "counts", "confusion", "activations"):
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
