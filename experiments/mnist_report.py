"""The MNIST study's report: the verdict, the tables, the data, the model and four plots.

`write_report` and `write_plots` read a results.json of `sweep.train_grid` (its runs, as typed
`records.RunRecord`s, summarized by `stats.summarize_runs`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import mish_jax
from experiments import data, report, stats
from experiments.records import RunRecord, TTest

BASELINE = "relu"
PLOTS = {
  "learning_curves.png": "Learning curves (mean over seeds, min-max band)",
  "confusion_matrices.png": "Test confusion matrices, errors only (summed over seeds)",
  "class_counts.png": "Examples per class",
  "activations.png": "The activations and their derivatives",
}


def _pct(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:.2f}%"


def _p(test: TTest | None) -> str:
  if test is None:
    return "—"
  return f"n/a ({test.reason})" if test.p_value is None else f"{test.p_value:.3g}"


def _compare(runs: Sequence[RunRecord], a: str, b: str) -> str:
  """One honest sentence on whether `a` beats `b` in test accuracy."""
  acc = {name: [r.test_accuracy for r in runs if r.activation == name] for name in (a, b)}
  test = stats.welch_test(acc[a], acc[b])
  diff = 100 * (np.mean(acc[a]) - np.mean(acc[b]))
  means = f"{_pct(np.mean(acc[a]))} vs {_pct(np.mean(acc[b]))} ({diff:+.2f} points"
  if test.p_value is None:
    return f"{a} vs {b}: {means}); no p-value: {test.reason}, so no verdict."
  means += f", Welch p = {test.p_value:.3g})"
  if test.p_value >= 0.05:
    return f"{a} vs {b}: {means}: not significant at 0.05, so {a} does not beat {b} here."
  verdict = "beats" if diff > 0 else "is worse than"
  return f"{a} vs {b}: {means}: significant at 0.05, {a} {verdict} {b}."


def write_report(
  results: Mapping[str, Any], dataset: data.Dataset, model_summary: str, out: Path
) -> None:
  """Writes report.md into `out`: the verdict, the tables, the data, the model and the plots."""
  meta = results["metadata"]
  runs = [RunRecord.from_json(run, "results.json") for run in results["runs"]]
  summary = stats.summarize_runs(runs, BASELINE)
  names = list(summary)
  lines = [
    f"# {', '.join(names)} on {dataset.name}",
    "",
    report.describe_environment(meta),
    "",
    f"Command: `{meta['command']}`",
    "",
    f"{len(runs)} runs in {results['wall_time_s'] / 60:.1f} minutes (wall clock, training and "
    "evaluation).",
    "",
    "## Verdict",
    "",
  ]
  if "mish" in names:  # the question of this study: does mish beat each of the others?
    lines += [f"- {_compare(runs, 'mish', other)}" for other in names if other != "mish"]
  else:
    reference = BASELINE if BASELINE in names else names[0]
    lines += [f"- {_compare(runs, name, reference)}" for name in names if name != reference]
  if len(names) == 1:
    lines.append(f"- Only {names[0]} was trained: nothing to compare.")
  for name in names:
    s = summary[name]
    if name != BASELINE and s.epoch_time_ratio is not None:
      ratio, cpu_ratio = s.epoch_time_ratio, s.epoch_cpu_time_ratio
      lines.append(
        f"- {name} costs {s.epoch_time_s:.1f} s per epoch, {ratio:.2f}x {BASELINE}'s "
        f"{summary[BASELINE].epoch_time_s:.1f} s ({100 * (ratio - 1):+.0f}%); in process CPU "
        f"time, which other load on the machine disturbs less, {cpu_ratio:.2f}x."
      )
  lines += ["", "## Test results", ""]
  rows = []
  for name in names:
    s = summary[name]
    acc, f1 = s.test_accuracy, s.test_macro_f1
    ci = "n/a" if acc.ci_low is None else f"[{_pct(acc.ci_low)}, {_pct(acc.ci_high)}]"
    std = "n/a" if acc.std is None else f"{100 * acc.std:.2f}"
    f1_std = "" if f1.std is None else f" ± {f1.std:.4f}"
    ratio, cpu_ratio = s.epoch_time_ratio, s.epoch_cpu_time_ratio
    rows.append(
      [
        name,
        s.n,
        _pct(acc.mean),
        std,
        ci,
        _p(s.vs_baseline.get("test_accuracy")),
        f"{f1.mean:.4f}{f1_std}",
        _p(s.vs_baseline.get("test_macro_f1")),
        f"{s.epoch_time_s:.1f}",
        "n/a" if ratio is None else f"{ratio:.2f}x",
        f"{s.epoch_cpu_time_s:.1f}",
        "n/a" if cpu_ratio is None else f"{cpu_ratio:.2f}x",
        f"{s.compile_time_s:.1f}",
      ]
    )
  lines.append(
    report.markdown_table(
      [
        "activation",
        "runs",
        "test accuracy",
        "std (points)",
        "95% CI",
        f"p vs {BASELINE}",
        "macro-F1",
        f"p vs {BASELINE} (F1)",
        "s/epoch",
        f"vs {BASELINE}",
        "CPU s/epoch",
        f"vs {BASELINE} (CPU)",
        "compile s",
      ],
      rows,
    )
  )
  lines += [
    "",
    "Mean over seeds; 95% CI of the mean from the t-distribution; p: Welch's two-sided t-test. "
    "Time per epoch: training only, wall clock and process CPU time (all threads), compilation "
    "excluded; compile s: the train step's, once per activation (later seeds reuse it).",
    "",
    "### Every run",
    "",
    report.markdown_table(
      [
        "activation",
        "seed",
        "test accuracy",
        "macro-F1",
        "s/epoch",
        "CPU s/epoch",
        "compile s",
        "params",
      ],
      [
        [
          r.activation,
          r.seed,
          _pct(r.test_accuracy),
          f"{r.test_macro_f1:.4f}",
          f"{r.epoch_time_s:.1f}",
          f"{r.epoch_cpu_time_s:.1f}",
          f"{r.compile_time_s:.1f}",
          f"{r.params:,}",
        ]
        for r in runs
      ],
    ),
    "",
    "### Per-class test F1 (mean over seeds)",
    "",
  ]
  per_class = {
    name: np.mean([r.test_per_class_f1 for r in runs if r.activation == name], axis=0)
    for name in names
  }
  lines.append(
    report.markdown_table(
      ["class", *names],
      [
        [label, *(f"{per_class[name][i]:.4f}" for name in names)]
        for i, label in enumerate(dataset.class_names)
      ],
    )
  )
  train_counts = np.bincount(dataset.train_labels, minlength=dataset.num_classes)
  test_counts = np.bincount(dataset.test_labels, minlength=dataset.num_classes)
  lines += [
    "",
    f"## Data: {dataset.name} ({dataset.source})",
    "",
    f"{len(dataset.train_labels):,} training and {len(dataset.test_labels):,} test images.",
    "",
    report.markdown_table(
      ["class", "train", "test"],
      [
        [label, f"{train_counts[i]:,}", f"{test_counts[i]:,}"]
        for i, label in enumerate(dataset.class_names)
      ],
    ),
    "",
    "## Model",
    "",
    "```",
    model_summary,
    "```",
    "",
    "## Config",
    "",
    "```json",
    json.dumps(meta["config"], indent=2),
    "```",
    "",
    "## Plots",
    "",
  ]
  lines += [f"![{title}]({name})\n" for name, title in PLOTS.items()]
  (out / "report.md").write_text("\n".join(lines))


def write_plots(results: Mapping[str, Any], dataset: data.Dataset, out: Path) -> None:
  """Writes the PNG plots of `PLOTS` into `out`."""
  runs = [RunRecord.from_json(run, "results.json") for run in results["runs"]]
  plot_learning_curves(runs, out / "learning_curves.png")
  plot_confusion_matrices(runs, dataset.class_names, out / "confusion_matrices.png")
  plot_class_counts(dataset, out / "class_counts.png")
  plot_activations(list(results["summary"]), out / "activations.png")


def plot_learning_curves(runs: Sequence[RunRecord], path: str | os.PathLike[str]) -> None:
  """Train loss, test loss and test accuracy per epoch: mean over seeds, min-max band."""
  panels = (
    ("train_loss", "train loss"),
    ("test_loss", "test loss"),
    ("test_accuracy", "test accuracy"),
  )
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
  activations = list(dict.fromkeys(run.activation for run in runs))
  for ax, (key, title) in zip(axes, panels, strict=True):
    for activation in activations:
      curves = [[h[key] for h in run.epochs] for run in runs if run.activation == activation]
      length = min(map(len, curves))
      values = np.array([c[:length] for c in curves])
      epochs = np.arange(1, length + 1)
      (line,) = ax.plot(epochs, values.mean(0), marker="o", label=f"{activation} (n={len(curves)})")
      ax.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    ax.set(title=title, xlabel="epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
  axes[0].legend()
  report.save_figure(fig, path)


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
  report.save_figure(fig, path)


def plot_confusion_matrices(
  runs: Sequence[RunRecord], class_names: Sequence[str], path: str | os.PathLike[str]
) -> None:
  """One test confusion matrix per activation, summed over its seeds; the diagonal is masked so
  that the errors stand out."""
  activations = list(dict.fromkeys(run.activation for run in runs))
  fig, axes = plt.subplots(1, len(activations), figsize=(5 * len(activations), 4.6), squeeze=False)
  for ax, activation in zip(axes[0], activations, strict=True):
    group = [run for run in runs if run.activation == activation]
    confusion = np.sum([run.test_confusion_matrix for run in group], axis=0)
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
  report.save_figure(fig, path)


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
  report.save_figure(fig, path)
