"""Input noise: a CNN's test accuracy and loss as Gaussian noise is added to the test images.

The Mish paper's robustness test on MNIST. The net is this project's Keras-style CNN
(`models.cnn`: conv 32 3x3, pool, conv 64 3x3, pool, dropout 0.25, dense 128, dropout 0.5,
dense 10) trained on clean images with the project's defaults (Adam, warmup + cosine to a peak
of 3e-3, batch 128). It is then tested on x + sigma * eps: x the [0, 1] test images (pixel / 255),
eps ~ N(0, 1) per pixel, drawn once (seed 0) and scaled for every sigma, with no clipping; sigma
is in units of the [0, 1] pixel range, so sigma 1 is noise as strong as a white stroke.

  python experiments/noise.py --quick              # or --protocol cpu | full, as paper.py
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
  # Run as `python experiments/noise.py`: make `experiments.*` importable as with `python -m`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib.pyplot as plt  # noqa: E402  (report chooses the Agg backend)
import numpy as np  # noqa: E402

from experiments import data, report, stats, store, suite, sweep, train  # noqa: E402

NAME = "noise"
NEEDS_DATA = True
CLAIM = (
  "Mish is more robust to Gaussian noise on the input than ReLU and Swish: it keeps a higher "
  "test accuracy (and lower loss) as the noise grows."
)
# Test accuracy (%) at sigma 3, 5 and 8, from the paper.
PUBLISHED: dict[str, dict[int, float]] = {
  "mish": {3: 78.8, 5: 69.2, 8: 21.6},
  "relu": {3: 77.4, 5: 49.6, 8: 15.7},
  "swish": {3: 72.1, 5: 46.0, 8: 26.8},
}
FIGURES = {
  "noise_curves.png": "Test accuracy and loss vs sigma (mean over seeds, min-max band; open "
  "marks: the paper)",
  "noise_examples.png": "A test digit at each sigma (each image min-max scaled for display)",
}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One way to run the noise test.

  Attributes:
    name: "quick", "cpu" or "full".
    sigmas: the noise levels, in [0, 1] pixel units.
    seeds: training runs per activation, with seeds 0..seeds-1.
    epochs: passes over the training images.
    train_limit: train on the first N training images (None: all 60,000).
    test_limit: test on the first N test images (None: all 10,000).
    noise_seed: seeds the noise (the same for every model).
  """

  name: str
  sigmas: tuple[float, ...]
  seeds: int
  epochs: int
  train_limit: int | None
  test_limit: int | None
  noise_seed: int = 0

  def describe(self) -> str:
    """The protocol in one line, for reports and --help."""
    train, test = suite.limits_text(self.train_limit, self.test_limit)
    return (
      f"sigma {', '.join(f'{s:g}' for s in self.sigmas)}; {self.seeds} seeds; the Keras-style "
      f"CNN trained {self.epochs} epoch(s) on {train} clean training images (Adam, warmup + "
      f"cosine, peak 3e-3, batch 128); tested on {test} test images"
    )

  def to_json(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "description": self.describe()}


_SIGMAS = tuple(float(s) for s in range(9))
PROTOCOLS = {
  "quick": Protocol("quick", _SIGMAS, seeds=2, epochs=1, train_limit=2048, test_limit=1000),
  "cpu": Protocol("cpu", _SIGMAS, seeds=3, epochs=1, train_limit=30000, test_limit=5000),
  "full": Protocol("full", _SIGMAS, seeds=3, epochs=10, train_limit=None, test_limit=None),
}


def config(protocol: Protocol) -> train.Config:
  """The training config (activation and seed are set per run).

  Every setting is spelled out, not left to `train.Config`'s defaults: the protocol must not
  change when they do (and a resume compares the stored config).
  """
  return train.Config(
    model="cnn",
    epochs=protocol.epochs,
    train_limit=protocol.train_limit,
    batch_size=128,
    eval_batch_size=1000,
    learning_rate=3e-3,
    warmup_epochs=0.5,
    schedule="warmup_cosine",
    optimizer="adam",
  )


def noisy(images: np.ndarray, sigma: float, eps: np.ndarray) -> np.ndarray:
  """x + sigma * eps, unclipped; exactly `images` at sigma 0."""
  return images if sigma == 0 else images + np.float32(sigma) * eps


def run(protocol: Protocol, out: Path, session: suite.Session) -> dict[str, Any]:
  """Trains every (activation, seed), tests it at every sigma, writes results, report, figures.

  The training is a `sweep.run_sweep` whose hook tests each trained model at every sigma; the
  outputs are rewritten after every run, and a resumed run skips the finished runs and
  continues the interrupted training from its checkpoint in `out`/checkpoints/.

  The data is `session.dataset` cut to the protocol's limits (see `suite.Experiment.run`);
  a resume of other settings, or of damaged results or checkpoints, raises a `cli.Fault`.
  """
  out.mkdir(parents=True, exist_ok=True)
  activations = session.activations
  dataset = session.dataset.limited(protocol.train_limit, protocol.test_limit)
  base = config(protocol)
  settings = {k: v for k, v in base.to_json().items() if k not in ("activation", "seed")}
  results = sweep.start_or_resume(
    out / "results.json",
    {
      "experiment": NAME,
      **suite.expected(protocol, session),
      "metadata": report.environment("experiments/noise.py", settings),
      "published": {name: PUBLISHED[name] for name in activations if name in PUBLISHED},
      "runs": [],
    },
    resume=session.resume,
    expected=suite.expected(protocol, session),
  )
  eps = np.random.default_rng(protocol.noise_seed).standard_normal(
    dataset.test_images.shape, dtype=np.float32
  )

  def test_noisy(trained: train.TrainResult) -> tuple[dict[str, Any], str]:
    curve = [
      train.evaluate(
        trained.model,
        noisy(dataset.test_images, sigma, eps),
        dataset.test_labels,
        batch_size=base.eval_batch_size,
      )
      for sigma in protocol.sigmas
    ]
    record = trained.record
    entry = {
      "activation": record.activation,
      "seed": record.seed,
      "clean_test_accuracy": record.test_accuracy,
      "clean_test_loss": record.test_loss,
      "train_accuracy": record.epochs[-1]["train_accuracy"],
      "epoch_time_s": record.epoch_time_s,
      "compile_time_s": record.compile_time_s,
      "sigmas": list(protocol.sigmas),
      "accuracy": [c["accuracy"] for c in curve],
      "loss": [c["loss"] for c in curve],
    }
    line = f"{record.activation} seed {record.seed}: clean {record.test_accuracy:.2%}, sigma " + (
      ", ".join(f"{s:g}: {c['accuracy']:.1%}" for s, c in zip(protocol.sigmas, curve, strict=True))
    )
    return entry, line

  bar = suite.progress_bar(len(activations) * protocol.seeds, NAME, session.progress)
  sweep.run_sweep(
    base,
    activations,
    range(protocol.seeds),
    out,
    dataset=dataset,
    results=results,
    save=lambda results: _save(results, out),
    hook=test_noisy,
    progress=session.progress and sys.stderr.isatty(),
    log=session.log,
    log_epochs=False,
    on_run=bar.update,
  )
  bar.close()
  plot_examples(dataset, eps, protocol.sigmas, out / "noise_examples.png")
  return results


def _save(results: dict[str, Any], out: Path) -> None:
  """Updates the summary and verdict, then writes results.json, report.md and the curves."""
  results["summary"] = summarize(results)
  results["claim"] = claim(results)
  store.write_json(out / "results.json", results)
  write_report(results, out)
  plot_curves(results, out / "noise_curves.png")


def _curves(results: Mapping[str, Any], activation: str, key: str) -> np.ndarray:
  """(seeds, sigmas) array of `key` ("accuracy" or "loss") for one activation."""
  return np.array([r[key] for r in results["runs"] if r["activation"] == activation])


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
  """Per activation and sigma: accuracy (%) and loss, mean and std over seeds, and the paper's."""
  sigmas = results["protocol"]["sigmas"]
  summary = {}
  for activation in results["activations"]:
    acc, loss = _curves(results, activation, "accuracy"), _curves(results, activation, "loss")
    if not len(acc):
      continue
    ddof = 1 if len(acc) > 1 else 0
    summary[activation] = {
      f"{sigma:g}": {
        "accuracy_mean": 100 * float(acc[:, i].mean()),
        "accuracy_std": 100 * float(acc[:, i].std(ddof=ddof)) if ddof else None,
        "loss_mean": float(loss[:, i].mean()),
        "loss_std": float(loss[:, i].std(ddof=ddof)) if ddof else None,
        "n": len(acc),
        "published": PUBLISHED.get(activation, {}).get(int(sigma)) if sigma == int(sigma) else None,
      }
      for i, sigma in enumerate(sigmas)
    }
  return summary


def claim(results: Mapping[str, Any]) -> dict[str, Any]:
  """The verdict on `CLAIM`, from the numbers.

  Robustness is a run's mean test accuracy over the noisy levels (sigma > 0). The claim holds
  when Mish's is significantly higher (Welch p < 0.05, over seeds) than every other activation's,
  partly holds when it is higher than some, and does not hold otherwise. The loss comparison is
  reported beside it.
  """
  activations = [a for a in results["activations"] if len(_curves(results, a, "accuracy"))]
  sigmas = np.asarray(results["protocol"]["sigmas"])
  others = [a for a in activations if a != "mish"]
  if "mish" not in activations or not others or not (sigmas > 0).any():
    return {
      "claim": CLAIM,
      "verdict": "undetermined",
      "sentence": "It needs mish, another activation and a sigma above 0.",
    }
  robust = {a: _curves(results, a, "accuracy")[:, sigmas > 0].mean(1) for a in activations}
  loss = {a: _curves(results, a, "loss")[:, sigmas > 0].mean(1) for a in activations}
  tests = {o: stats.compare(robust["mish"], robust[o]) for o in others}
  loss_tests = {o: stats.compare(loss["mish"], loss[o]) for o in others}
  beaten = [o for o in others if tests[o].significant and tests[o].diff > 0]
  worse = [o for o in others if tests[o].significant and tests[o].diff < 0]
  verdict = "holds" if beaten == others else "partly holds" if beaten else "does not hold"
  noisy_levels = f"sigma {', '.join(f'{s:g}' for s in sigmas[sigmas > 0])}"
  versus = "; ".join(f"{o} {stats.mean_std(robust[o])}% ({suite.p_text(tests[o])})" for o in others)
  lower_loss = [o for o in others if loss_tests[o].significant and loss_tests[o].diff < 0]
  sentence = (
    f"Mean test accuracy over {noisy_levels}: mish {stats.mean_std(robust['mish'])}% vs "
    f"{versus}. "
    + (
      f"Mish is significantly more robust than {suite.join_names(beaten)}"
      if beaten
      else "Mish is not significantly more robust than any other"
    )
    + (f" and significantly less robust than {suite.join_names(worse)}" if worse else "")
    + "; its mean loss over those levels is "
    + (
      f"significantly lower than {suite.join_names(lower_loss)}'s"
      if lower_loss
      else "not significantly lower than any other's"
    )
    + f" (mish {stats.mean_std(loss['mish'], 1, 3)}, "
    + ", ".join(f"{o} {stats.mean_std(loss[o], 1, 3)}" for o in others)
    + ")."
  )
  return {
    "claim": CLAIM,
    "verdict": verdict,
    "sentence": sentence,
    "noisy_accuracy": {o: tests[o].to_json() for o in others},
    "noisy_loss": {o: loss_tests[o].to_json() for o in others},
  }


def section(results: Mapping[str, Any], link_prefix: str = "") -> list[str]:
  """The report's section: protocol, accuracy and loss by sigma beside the paper's, verdict."""
  protocol, summary = results["protocol"], results["summary"]
  activations = list(summary)

  def cell(entry: Mapping[str, Any], key: str, scale: str) -> str:
    std = entry[f"{key}_std"]
    return f"{entry[f'{key}_mean']:{scale}}" + ("" if std is None else f" ± {std:{scale}}")

  acc_rows, loss_rows = [], []
  for sigma in (f"{s:g}" for s in protocol["sigmas"]):
    acc_row, loss_row = [sigma], [sigma]
    for activation in activations:
      entry = summary[activation][sigma]
      published = entry["published"]
      acc_row += [cell(entry, "accuracy", ".1f"), "—" if published is None else f"{published:g}"]
      loss_row.append(cell(entry, "loss", ".3f"))
    acc_rows.append(acc_row)
    loss_rows.append(loss_row)
  headers = ["sigma"]
  for activation in activations:
    headers += [f"{activation} ours", f"{activation} paper"]
  n = len(_curves(results, activations[0], "accuracy")) if activations else 0
  return [
    "## Input noise: test accuracy (%) and loss vs Gaussian noise sigma",
    "",
    f"Protocol **{protocol['name']}**: {protocol['description']}. Noise: x + sigma * eps, x the "
    "[0, 1] test images, eps ~ N(0, 1) per pixel (one draw, scaled for every sigma), unclipped.",
    "",
    report.markdown_table(headers, acc_rows),
    "",
    f"Test accuracy (%); ours: mean ± std over {n} seeds (protocol {protocol['name']}); paper: "
    "its values at sigma 3, 5 and 8 (— elsewhere). Sigma 0 is the clean test set. The paper "
    "does not say in which pixel units its sigma is, so its columns may measure other noise "
    "than ours.",
    "",
    report.markdown_table(["sigma", *activations], loss_rows),
    "",
    f"Test loss (cross-entropy), mean ± std over {n} seeds; the paper gives no loss values.",
    "",
    f"Claim: {results['claim']['claim']} Verdict: **{results['claim']['verdict']}**. "
    f"{results['claim']['sentence']}",
    "",
    *[f"![{title}]({link_prefix}{name})\n" for name, title in FIGURES.items()],
  ]


def write_report(results: Mapping[str, Any], out: Path) -> None:
  """report.md: the section, then every run and the environment."""
  meta = results["metadata"]
  lines = [
    "# Input noise (the Mish paper's robustness test)",
    "",
    report.describe_environment(meta),
    "",
    *section(results),
    "",
    "## Every run",
    "",
    report.markdown_table(
      ["activation", "seed", "clean test acc %", "train acc %", "s/epoch", "compile s"]
      + [f"acc % at {s:g}" for s in results["protocol"]["sigmas"]],
      [
        [
          r["activation"],
          r["seed"],
          f"{100 * r['clean_test_accuracy']:.2f}",
          f"{100 * r['train_accuracy']:.2f}",
          f"{r['epoch_time_s']:.1f}",
          f"{r['compile_time_s']:.1f}",
          *(f"{100 * a:.1f}" for a in r["accuracy"]),
        ]
        for r in results["runs"]
      ],
    ),
    "",
  ]
  (out / "report.md").write_text("\n".join(lines))


def plot_curves(results: Mapping[str, Any], path: Path) -> None:
  """Accuracy and loss vs sigma: mean over seeds with a min-max band; the paper's as open marks."""
  sigmas = results["protocol"]["sigmas"]
  fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
  for activation in results["activations"]:
    acc, loss = _curves(results, activation, "accuracy"), _curves(results, activation, "loss")
    if not len(acc):
      continue
    for ax, values, scale in ((acc_ax, acc, 100), (loss_ax, loss, 1)):
      (line,) = ax.plot(
        sigmas, scale * values.mean(0), marker="o", label=f"{activation} (n={len(values)})"
      )
      ax.fill_between(
        sigmas, scale * values.min(0), scale * values.max(0), color=line.get_color(), alpha=0.2
      )
    published = PUBLISHED.get(activation)
    if published:
      acc_ax.plot(
        list(published),
        list(published.values()),
        linestyle="none",
        marker="s",
        markersize=8,
        markerfacecolor="none",
        color=line.get_color(),
        label=f"{activation} paper",
      )
  acc_ax.axhline(10, color="gray", linestyle=":", label="chance (10%)")
  acc_ax.set(title="test accuracy (%)", xlabel="noise sigma ([0, 1] pixel units)")
  loss_ax.set(title="test loss", xlabel="noise sigma ([0, 1] pixel units)")
  for ax in (acc_ax, loss_ax):
    ax.grid(alpha=0.3)
  acc_ax.legend(fontsize=8)
  fig.suptitle(f"Input noise (protocol {results['protocol']['name']})")
  report.save_figure(fig, path)


def plot_examples(
  dataset: data.Dataset, eps: np.ndarray, sigmas: Sequence[float], path: Path
) -> None:
  """The first test image at every sigma."""
  fig, axes = plt.subplots(1, len(sigmas), figsize=(1.4 * len(sigmas), 1.8), squeeze=False)
  for ax, sigma in zip(axes[0], sigmas, strict=True):
    ax.imshow(noisy(dataset.test_images[:1], sigma, eps[:1])[0, ..., 0], cmap="gray")
    ax.set_title(f"sigma {sigma:g}", fontsize=8)
    ax.axis("off")
  report.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
  """The command line of this experiment alone (`paper.py`'s, without --only)."""
  return suite.main(argv, (sys.modules[__name__],), prog="python experiments/noise.py")


if __name__ == "__main__":
  sys.exit(main())
