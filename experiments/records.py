"""Typed records of what a run measured and what a summary concludes, and their JSON forms.

Results files hold the `to_json()` of these records; code that reads figures back (reports,
resumed sweeps) goes through `from_json`, which refuses a record of another shape, so no other
module assembles or parses their keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from experiments.cli import Fault


@dataclasses.dataclass(frozen=True)
class MeanCI:
  """Mean, sample standard deviation and a confidence interval of the mean.

  Attributes:
    n: how many values.
    mean: their mean (None without values).
    std: sample std (ddof 1; None with fewer than 2 values).
    ci_low: the interval's lower end (None with fewer than 2 values).
    ci_high: its upper end.
    reason: why std and the interval are None, else None.
  """

  n: int
  mean: float | None
  std: float | None
  ci_low: float | None
  ci_high: float | None
  reason: str | None

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TTest:
  """A two-sided t-test; `t` and `p_value` are None, with the reason, when it is undefined."""

  t: float | None
  p_value: float | None
  reason: str | None

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """mean(a) - mean(b) and a test of it; significant means p < 0.05.

  Attributes:
    diff: mean(a) - mean(b) (None when there are no pairs to compare).
    test: the t-test.
    pairs: for a paired test, how many pairs, else None.
    a_higher: for a paired test, in how many pairs a > b, else None.
  """

  diff: float | None
  test: TTest
  pairs: int | None = None
  a_higher: int | None = None

  @property
  def p_value(self) -> float | None:
    return self.test.p_value

  @property
  def significant(self) -> bool:
    return self.test.p_value is not None and self.test.p_value < 0.05

  def to_json(self) -> dict[str, Any]:
    if self.pairs is not None:  # a paired test: its counts instead of t
      return {
        "pairs": self.pairs,
        "a_higher": self.a_higher,
        "diff": self.diff,
        "p_value": self.p_value,
        "significant": self.significant,
        "reason": self.test.reason,
      }
    return {
      "diff": self.diff,
      "p_value": self.p_value,
      "significant": self.significant,
      "t": self.test.t,
      "reason": self.test.reason,
    }


# The fields of a run's record, in the order results.json lists them.
_RUN_FIELDS = (
  "activation",
  "seed",
  "epochs",
  "test_accuracy",
  "test_macro_f1",
  "test_loss",
  "test_per_class_f1",
  "test_confusion_matrix",
  "epoch_time_s",
  "epoch_cpu_time_s",
  "compile_time_s",
  "params",
  "non_trainable_params",
  "devices",
  "config",
)


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """What one trained (activation, seed) measured.

  Attributes:
    activation: its name.
    seed: its seed.
    epochs: per epoch: train and test loss, accuracy and macro-F1, the wall and process CPU
      seconds of training and the wall seconds of evaluating.
    test_accuracy: after the last epoch.
    test_macro_f1: after the last epoch.
    test_loss: after the last epoch (mean cross-entropy).
    test_per_class_f1: per class.
    test_confusion_matrix: rows true labels, columns predictions.
    epoch_time_s: mean training wall seconds per epoch, compilation excluded.
    epoch_cpu_time_s: the same in process CPU seconds (all threads).
    compile_time_s: the train step's compilation (near 0 when jit's cache had it).
    params: trainable parameters.
    non_trainable_params: BatchNorm statistics.
    devices: how many devices trained it.
    config: the run's `train.Config`, as JSON.
  """

  activation: str
  seed: int
  epochs: list[dict[str, Any]]
  test_accuracy: float
  test_macro_f1: float
  test_loss: float
  test_per_class_f1: list[float]
  test_confusion_matrix: list[list[int]]
  epoch_time_s: float
  epoch_cpu_time_s: float
  compile_time_s: float
  params: int
  non_trainable_params: int
  devices: int
  config: dict[str, Any]

  def to_json(self) -> dict[str, Any]:
    return {name: getattr(self, name) for name in _RUN_FIELDS}

  @classmethod
  def from_json(cls, obj: Any, where: str) -> RunRecord:
    """The record stored as `obj`.

    Raises:
      Fault: `obj` is not a run record; `where` names the file for the message.
    """
    if not isinstance(obj, Mapping) or set(obj) != set(_RUN_FIELDS):
      raise Fault(f"{where} holds a run record of another shape; choose another --out")
    return cls(**obj)


@dataclasses.dataclass(frozen=True)
class ActivationSummary:
  """One activation's runs, summarized, and compared with the baseline's.

  Attributes:
    n: how many runs.
    test_accuracy: over seeds.
    test_macro_f1: over seeds.
    vs_baseline: metric -> Welch's test against the baseline's runs; empty for the baseline
      itself, and None tests (with the reason) when the baseline has no runs.
    epoch_time_s: mean training wall seconds per epoch.
    epoch_cpu_time_s: mean process CPU seconds per epoch.
    epoch_time_ratio: epoch_time_s over the baseline's (None without baseline runs).
    epoch_cpu_time_ratio: the same for CPU time.
    compile_time_s: the largest compile time of its runs (later seeds reuse the compiled step).
  """

  n: int
  test_accuracy: MeanCI
  test_macro_f1: MeanCI
  vs_baseline: dict[str, TTest]
  epoch_time_s: float
  epoch_cpu_time_s: float
  epoch_time_ratio: float | None
  epoch_cpu_time_ratio: float | None
  compile_time_s: float

  def to_json(self, baseline: str) -> dict[str, Any]:
    """The results.json form: comparisons under "<metric>_vs_<baseline>" keys."""
    entry: dict[str, Any] = {"n": self.n}
    for metric in ("test_accuracy", "test_macro_f1"):
      entry[metric] = getattr(self, metric).to_json()
      if metric in self.vs_baseline:
        entry[f"{metric}_vs_{baseline}"] = self.vs_baseline[metric].to_json()
    entry["epoch_time_s"] = self.epoch_time_s
    entry[f"epoch_time_vs_{baseline}"] = self.epoch_time_ratio
    entry["epoch_cpu_time_s"] = self.epoch_cpu_time_s
    entry[f"epoch_cpu_time_vs_{baseline}"] = self.epoch_cpu_time_ratio
    entry["compile_time_s"] = self.compile_time_s
    return entry
