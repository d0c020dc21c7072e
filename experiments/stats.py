"""Metrics and statistics: accuracy and F1 from a confusion matrix, CIs, Welch and paired tests.

Every function takes plain numbers and returns the typed records of `records`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from experiments.records import ActivationSummary, Comparison, MeanCI, RunRecord, TTest


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


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
  """Mean, sample standard deviation and a t-distribution confidence interval of the mean.

  Args:
    values: the samples (e.g. test accuracies over seeds).
    confidence: the interval's coverage.

  Returns:
    With fewer than 2 values, std and the interval are None and `reason` says why.
  """
  x = np.asarray(values, np.float64)
  if len(x) == 0:
    return MeanCI(0, None, None, None, None, "no runs")
  mean = float(x.mean())
  if len(x) < 2:
    return MeanCI(len(x), mean, None, None, None, "fewer than 2 runs: no spread to estimate")
  std = float(x.std(ddof=1))
  half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)) * std / math.sqrt(len(x))
  return MeanCI(len(x), mean, std, mean - half, mean + half, None)


def welch_test(a: Sequence[float], b: Sequence[float]) -> TTest:
  """Welch's two-sided t-test of mean(a) == mean(b) (`scipy.stats.ttest_ind(equal_var=False)`).

  Returns:
    t and p are None, with the reason, when either sample has fewer than 2 values or both have
    zero variance (the test is then undefined).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if min(len(a), len(b)) < 2:
    return TTest(None, None, "fewer than 2 runs in a group")
  if a.var(ddof=1) == 0 and b.var(ddof=1) == 0:
    return TTest(None, None, "zero variance in both groups")
  result = stats.ttest_ind(a, b, equal_var=False)
  return TTest(float(result.statistic), float(result.pvalue), None)


def compare(a: Sequence[float], b: Sequence[float]) -> Comparison:
  """mean(a) - mean(b) and Welch's test (`welch_test`)."""
  return Comparison(float(np.mean(a) - np.mean(b)), welch_test(a, b))


def compare_paired(a: Sequence[float], b: Sequence[float]) -> Comparison:
  """mean(a - b) and the paired t-test over pairs (a[i], b[i]); undefined below 2 pairs."""
  x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
  counts = {"pairs": len(x), "a_higher": int((x > y).sum())}
  if len(x) < 2 or np.all(x == y):
    return Comparison(None, TTest(None, None, "too few pairs"), **counts)
  p = float(stats.ttest_rel(x, y).pvalue)
  return Comparison(float((x - y).mean()), TTest(None, p, None), **counts)


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
  """'mean ± std' (sample std) of `values` times `scale`; just the mean for one value."""
  if not len(values):
    return "n/a"
  x = np.asarray(values, np.float64) * scale
  if len(x) < 2:
    return f"{x.mean():.{digits}f}"
  return f"{x.mean():.{digits}f} ± {x.std(ddof=1):.{digits}f}"


def summarize_runs(
  runs: Sequence[RunRecord], baseline: str = "relu"
) -> dict[str, ActivationSummary]:
  """Summarizes runs per activation, in order of first appearance, against `baseline`'s runs."""
  groups: dict[str, list[RunRecord]] = {}
  for run in runs:
    groups.setdefault(run.activation, []).append(run)
  base = groups.get(baseline, [])

  def mean(group: Sequence[RunRecord], key: str) -> float:
    return float(np.mean([getattr(run, key) for run in group]))

  summary = {}
  for activation, group in groups.items():
    vs_baseline = {}
    for metric in ("test_accuracy", "test_macro_f1"):
      if not base:
        vs_baseline[metric] = TTest(None, None, "no baseline runs")
      elif activation != baseline:
        vs_baseline[metric] = welch_test(
          [getattr(run, metric) for run in group], [getattr(run, metric) for run in base]
        )
    times = {key: mean(group, key) for key in ("epoch_time_s", "epoch_cpu_time_s")}
    summary[activation] = ActivationSummary(
      n=len(group),
      test_accuracy=mean_ci([run.test_accuracy for run in group]),
      test_macro_f1=mean_ci([run.test_macro_f1 for run in group]),
      vs_baseline=vs_baseline,
      epoch_time_s=times["epoch_time_s"],
      epoch_cpu_time_s=times["epoch_cpu_time_s"],
      epoch_time_ratio=times["epoch_time_s"] / mean(base, "epoch_time_s") if base else None,
      epoch_cpu_time_ratio=(
        times["epoch_cpu_time_s"] / mean(base, "epoch_cpu_time_s") if base else None
      ),
      compile_time_s=max(run.compile_time_s for run in group),
    )
  return summary
