"""Tests of experiments/stats.py: metrics, CIs, Welch and paired tests, summaries."""

import jax.numpy as jnp
import numpy as np
import pytest
from experiment_testing import run_record
from scipy import stats as scipy_stats

from experiments import stats, train
from experiments.records import TTest


def test_metrics_from_confusion():
  confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2: no examples, no predictions
  metrics = stats.metrics_from_confusion(confusion)
  assert metrics["accuracy"] == pytest.approx(8 / 11)
  f1_0 = 2 * 5 / (2 * 5 + 2 + 1)
  f1_1 = 2 * 3 / (2 * 3 + 1 + 2)
  np.testing.assert_allclose(metrics["per_class_f1"], [f1_0, f1_1, 0.0])
  assert metrics["macro_f1"] == pytest.approx((f1_0 + f1_1) / 3)


def test_confusion_matrix_counts_and_weights():
  labels, predictions = jnp.array([0, 1, 1, 2]), jnp.array([0, 1, 0, 2])
  np.testing.assert_array_equal(
    train.confusion_matrix(labels, predictions, 3, weights=jnp.array([1.0, 1.0, 1.0, 0.0])),
    [[1, 0, 0], [1, 1, 0], [0, 0, 0]],
  )


def test_mean_ci_matches_the_t_interval():
  values = [0.9912, 0.9905, 0.9921, 0.9899, 0.9917]
  result = stats.mean_ci(values)
  low, high = scipy_stats.t.interval(
    0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values)
  )
  assert result.n == 5
  assert result.mean == pytest.approx(np.mean(values))
  assert result.std == pytest.approx(np.std(values, ddof=1))
  assert (result.ci_low, result.ci_high) == pytest.approx((low, high))
  assert result.reason is None


def test_mean_ci_of_fewer_than_two_values():
  one = stats.mean_ci([0.99])
  assert one.mean == 0.99 and one.std is None and one.ci_low is None
  assert "fewer than 2" in one.reason
  assert stats.mean_ci([]).mean is None


def test_welch_test_on_known_numbers():
  a, b = [0.9912, 0.9905, 0.9921, 0.9899, 0.9917], [0.9889, 0.9901, 0.9880, 0.9895]
  result = stats.welch_test(a, b)
  reference = scipy_stats.ttest_ind(a, b, equal_var=False)
  assert result.p_value == pytest.approx(reference.pvalue)
  assert result.t == pytest.approx(reference.statistic)
  # And by hand: Welch's t with Welch-Satterthwaite degrees of freedom.
  va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
  dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
  assert result.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), dof))


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on a constant group
def test_welch_test_undefined_cases_give_none_with_a_reason():
  assert stats.welch_test([0.99], [0.98, 0.97]) == TTest(None, None, "fewer than 2 runs in a group")
  constant = stats.welch_test([0.99, 0.99], [0.98, 0.98])
  assert constant.p_value is None and "zero variance" in constant.reason
  # One constant group is fine: Welch uses the other's variance.
  assert stats.welch_test([0.99, 0.99], [0.98, 0.97]).p_value is not None


def test_summarize_runs():
  runs = [
    run_record("relu", 0.990, 10),
    run_record("relu", 0.991, 12),
    run_record("mish", 0.992, 15),
  ]
  typed = stats.summarize_runs(runs)
  assert typed["mish"].epoch_time_ratio == pytest.approx(15 / 11)
  assert typed["relu"].vs_baseline == {}
  summary = {name: s.to_json("relu") for name, s in typed.items()}
  assert list(summary) == ["relu", "mish"]
  assert summary["relu"]["test_accuracy"]["mean"] == pytest.approx(0.9905)
  assert "test_accuracy_vs_relu" not in summary["relu"]
  assert summary["mish"]["epoch_time_vs_relu"] == pytest.approx(15 / 11)
  assert summary["mish"]["epoch_cpu_time_s"] == 30
  assert summary["mish"]["epoch_cpu_time_vs_relu"] == pytest.approx(15 / 11)
  assert summary["relu"]["compile_time_s"] == 1.2  # the run that compiled
  assert summary["mish"]["test_accuracy_vs_relu"]["p_value"] is None  # one mish run
  no_baseline = {name: s.to_json("relu") for name, s in stats.summarize_runs(runs[2:]).items()}
  assert no_baseline["mish"]["test_accuracy_vs_relu"]["reason"] == "no baseline runs"
  assert no_baseline["mish"]["epoch_time_vs_relu"] is None


def test_compare_paired_against_scipy():
  rng = np.random.default_rng(0)
  a = rng.normal(1.0, 0.1, 7)
  b = a - rng.normal(0.05, 0.02, 7)
  result = stats.compare_paired(a, b)
  assert result.p_value == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
  assert result.diff == pytest.approx(np.mean(a - b))
  assert (result.pairs, result.a_higher) == (7, int((a > b).sum()))
  assert result.to_json()["significant"] == (result.p_value < 0.05)
  undefined = stats.compare_paired([1.0], [0.5])
  assert undefined.p_value is None and undefined.diff is None and not undefined.significant


def test_compare_and_mean_std():
  a, b = [0.9, 0.92, 0.91], [0.8, 0.82, 0.79]
  result = stats.compare(a, b)
  assert result.diff == pytest.approx(np.mean(a) - np.mean(b))
  assert result.significant and result.to_json()["t"] == result.test.t
  assert stats.mean_std([0.5]) == "50.0"
  assert stats.mean_std([0.5, 0.7]) == f"60.0 ± {100 * np.std([0.5, 0.7], ddof=1):.1f}"
  assert stats.mean_std([]) == "n/a"
