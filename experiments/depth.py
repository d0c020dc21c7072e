"""Depth: test accuracy of a conv + deep dense stack as it grows from 15 to 25 layers.

The Mish paper's depth test on MNIST. The network (`models.deep_cnn`): conv 20 5x5 + act,
conv 50 5x5 + act, 2x2 max-pool, dropout 0.25, then k x [dense 500, BatchNorm, act, dropout 0.25]
and a dense 10 head, trained with plain SGD (no momentum) at a constant learning rate, batch 128.
The full protocol uses Keras' defaults (the paper names no values): learning rate 0.01 and
BatchNorm momentum 0.99. The reduced ones train about 50x fewer steps, in which that rate barely
leaves chance level and such slow running statistics do not settle, so they use a rate of 0.1
and a momentum of 0.9; each report says which.

Layers are counted as weight layers: the 2 convs, the k hidden dense layers and the head (pooling,
dropout, BatchNorm and activations are not counted), so L layers have k = L - 3 hidden dense
layers: 15..25 layers are k = 12..22.

  python experiments/depth.py --quick              # or --protocol cpu | full, as paper.py
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
  # Run as `python experiments/depth.py`: make `experiments.*` importable as with `python -m`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib.pyplot as plt  # noqa: E402  (report chooses the Agg backend)
import numpy as np  # noqa: E402

from experiments import report, stats, store, suite, sweep, train  # noqa: E402

NAME = "depth"
NEEDS_DATA = True
CONV_LAYERS = 2
LAYER_COUNT = (
  "layers = weight layers: 2 convs + k hidden dense layers + the dense head, so k = layers - 3 "
  "(pooling, dropout, BatchNorm and activations are not counted)"
)
CLAIM = (
  "Mish keeps its accuracy as the network deepens from 15 to 25 layers, while ReLU collapses "
  "from about 17 layers and Swish from about 23."
)
COLLAPSE_POINTS = 10.0  # an accuracy drop, from the shallowest depth, that counts as a collapse
# Test accuracy (%) by layers, read off the paper's depth figure.
PUBLISHED: dict[str, dict[int, float]] = {
  "relu": {15: 97.2, 17: 86.0, 18: 58.0, 20: 48.0, 22: 27.0},
  "swish": {15: 98.20, 17: 97.95, 20: 96.22, 23: 73.58, 25: 39.68},
  "mish": {15: 98.4, 20: 97.5, 23: 94.6, 25: 85.0},
}
FIGURE = "depth_accuracy.png"


@dataclasses.dataclass(frozen=True)
class Protocol:
  """One way to run the depth test.

  Attributes:
    name: "quick", "cpu" or "full".
    depths: total layers (see `LAYER_COUNT`), each at least 3.
    seeds: runs per (depth, activation), with seeds 0..seeds-1.
    epochs: passes over the training images.
    train_limit: train on the first N training images (None: all 60,000).
    test_limit: test on the first N test images (None: all 10,000).
    learning_rate: plain SGD's constant rate.
    batch_norm_momentum: the decay of BatchNorm's running statistics.
    batch_size: the training batch.
  """

  name: str
  depths: tuple[int, ...]
  seeds: int
  epochs: int
  train_limit: int | None
  test_limit: int | None
  learning_rate: float = 0.01
  batch_norm_momentum: float = 0.99
  batch_size: int = 128

  def describe(self) -> str:
    """The protocol in one line, for reports and --help."""
    train, test = suite.limits_text(self.train_limit, self.test_limit)
    return (
      f"layers {', '.join(map(str, self.depths))}; {self.seeds} seeds; {self.epochs} epoch(s) on "
      f"{train} training images; tested on {test} test images; plain SGD (no momentum), "
      f"constant lr {self.learning_rate:g}, batch {self.batch_size}; BatchNorm momentum "
      f"{self.batch_norm_momentum:g}"
    )

  def to_json(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "description": self.describe()}


_SHORT = {"learning_rate": 0.1, "batch_norm_momentum": 0.9}  # see the module's docstring
PROTOCOLS = {
  "quick": Protocol(
    "quick", depths=(15, 20), seeds=2, epochs=1, train_limit=640, test_limit=500, **_SHORT
  ),
  "cpu": Protocol(
    "cpu", depths=(15, 20, 25), seeds=3, epochs=1, train_limit=12800, test_limit=2000, **_SHORT
  ),
  "full": Protocol(
    "full", depths=tuple(range(15, 26)), seeds=3, epochs=10, train_limit=None, test_limit=None
  ),
}


def config(protocol: Protocol, layers: int) -> train.Config:
  """The training config of one depth (activation and seed are set per run).

  The settings that matter are spelled out, not left to `train.Config`'s defaults: the
  protocol must not change when they do (and a resume compares the stored config).
  """
  return train.Config(
    model="deep_cnn",
    model_options={
      "dense_layers": layers - CONV_LAYERS - 1,
      "batch_norm_momentum": protocol.batch_norm_momentum,
    },
    train_limit=protocol.train_limit,
    epochs=protocol.epochs,
    batch_size=protocol.batch_size,
    eval_batch_size=1000,
    learning_rate=protocol.learning_rate,
    schedule="constant",
    optimizer="sgd",
  )


def _compact(record: Mapping[str, Any]) -> dict[str, Any]:
  """What the report needs of a `train_and_evaluate` record."""
  last = record["epochs"][-1]
  return {
    "activation": record["activation"],
    "seed": record["seed"],
    "test_accuracy": record["test_accuracy"],
    "test_loss": record["test_loss"],
    "train_accuracy": last["train_accuracy"],
    "train_loss": last["train_loss"],
    "epoch_time_s": record["epoch_time_s"],
    "compile_time_s": record["compile_time_s"],
    "params": record["params"],
  }


def _summary(runs: Sequence[Mapping[str, Any]], activations: Sequence[str]) -> dict[str, Any]:
  summary = {}
  for activation in activations:
    group = [r for r in runs if r["activation"] == activation]
    if group:
      summary[activation] = {
        "n": len(group),
        **{
          key: stats.mean_ci([r[key] for r in group]).to_json()
          for key in ("test_accuracy", "test_loss", "train_accuracy")
        },
        "epoch_time_s": float(np.mean([r["epoch_time_s"] for r in group])),
        "compile_time_s": float(np.mean([r["compile_time_s"] for r in group])),
      }
  return summary


def run(protocol: Protocol, out: Path, session: suite.Session) -> dict[str, Any]:
  """Trains every (depth, activation, seed) and writes results.json, report.md and the figure.

  Each depth is a `sweep.train_grid` into `out`/runs/layers<L>/, so that a resumed run skips
  the finished runs and continues the interrupted one from its last epoch's checkpoint. The
  outputs are rewritten after every depth.

  The data is `session.dataset` cut to the protocol's limits (see `suite.Experiment.run`);
  a resume of other settings, or of damaged results or checkpoints, raises a `cli.Fault`.
  """
  out.mkdir(parents=True, exist_ok=True)
  activations = session.activations
  if session.resume and (out / "results.json").exists():
    store.read_matching(out / "results.json", suite.expected(protocol, session))
  dataset = session.dataset.limited(protocol.train_limit, protocol.test_limit)
  results: dict[str, Any] = {
    "experiment": NAME,
    "protocol": protocol.to_json(),
    "activations": list(activations),
    "layer_count": LAYER_COUNT,
    "published": {name: PUBLISHED[name] for name in activations if name in PUBLISHED},
    "depths": [],
  }
  bar = suite.progress_bar(
    len(protocol.depths) * len(activations) * protocol.seeds, NAME, session.progress
  )
  for layers in protocol.depths:
    base = config(protocol, layers)
    settings = {k: v for k, v in base.to_json().items() if k not in ("activation", "seed")}
    settings["test_limit"] = protocol.test_limit
    sweep_results = sweep.train_grid(
      base,
      activations,
      range(protocol.seeds),
      out / "runs" / f"layers{layers}",
      dataset=dataset,
      metadata=report.environment("experiments/depth.py", settings),
      resume=session.resume,
      progress=session.progress and sys.stderr.isatty(),
      log=lambda line, layers=layers: session.log(f"{layers} layers, {line}"),
      on_run=bar.update,
    )
    runs = [_compact(record) for record in sweep_results["runs"]]
    results["metadata"] = sweep_results["metadata"]
    results["depths"].append(
      {
        "layers": layers,
        "dense_layers": layers - CONV_LAYERS - 1,
        "params": runs[0]["params"],
        "summary": _summary(runs, activations),
        "runs": runs,
      }
    )
    results["summary"] = summarize(results)
    results["claim"] = claim(results)
    store.write_json(out / "results.json", results)
    write_report(results, out)
    plot(results, out / FIGURE)
  bar.close()
  return results


def _accuracies(results: Mapping[str, Any]) -> dict[tuple[int, str], list[float]]:
  """(layers, activation) -> test accuracies over seeds."""
  return {
    (d["layers"], run["activation"]): [
      r["test_accuracy"] for r in d["runs"] if r["activation"] == run["activation"]
    ]
    for d in results["depths"]
    for run in d["runs"]
  }


def summarize(results: Mapping[str, Any]) -> dict[str, Any]:
  """Per activation, its test accuracy (%) by layers: mean, std and seeds, beside the paper's."""
  acc = _accuracies(results)
  return {
    activation: {
      str(layers): {
        "mean": 100 * float(np.mean(acc[layers, activation])),
        "std": 100 * float(np.std(acc[layers, activation], ddof=1))
        if len(acc[layers, activation]) > 1
        else None,
        "n": len(acc[layers, activation]),
        "published": PUBLISHED.get(activation, {}).get(layers),
      }
      for layers in (d["layers"] for d in results["depths"])
    }
    for activation in results["activations"]
  }


def claim(results: Mapping[str, Any]) -> dict[str, Any]:
  """The verdict on `CLAIM`, from the numbers.

  It holds when Mish is significantly (Welch p < 0.05) more accurate than every other activation
  at the deepest depth run and does not itself collapse (lose more than `COLLAPSE_POINTS` from
  the shallowest depth); it partly holds when it beats some of them there; else it does not hold.
  """
  activations = results["activations"]
  depths = [d["layers"] for d in results["depths"]]
  others = [a for a in activations if a != "mish"]
  if "mish" not in activations or not others or len(depths) < 2:
    return {
      "claim": CLAIM,
      "verdict": "undetermined",
      "sentence": "It needs mish, another activation and at least two depths.",
    }
  acc = _accuracies(results)
  first, last = depths[0], depths[-1]
  drop = {a: 100 * (np.mean(acc[first, a]) - np.mean(acc[last, a])) for a in activations}
  tests = {o: stats.compare(acc[last, "mish"], acc[last, o]) for o in others}
  beaten = [o for o in others if tests[o].significant and tests[o].diff > 0]
  worse = [o for o in others if tests[o].significant and tests[o].diff < 0]
  collapsed = [a for a in activations if drop[a] > COLLAPSE_POINTS]
  if beaten == others and "mish" not in collapsed:
    verdict = "holds"
  elif beaten:
    verdict = "partly holds"
  else:
    verdict = "does not hold"
  versus = "; ".join(
    f"{o} {stats.mean_std(acc[last, o])}% ({suite.p_text(tests[o])})" for o in others
  )
  drops = ", ".join(f"{a} {drop[a]:.1f}" for a in activations)
  sentence = (
    f"At {last} layers mish reaches {stats.mean_std(acc[last, 'mish'])}% vs {versus}. "
    f"Points of accuracy lost from {first} to {last} layers (negative: gained): {drops}; "
    + (
      f"{suite.join_names(collapsed)} collapse{'s' if len(collapsed) == 1 else ''} "
      f"(more than {COLLAPSE_POINTS:g} points lost)"
      if collapsed
      else f"none collapses (more than {COLLAPSE_POINTS:g} points lost)"
    )
    + ". "
    + (
      f"Mish is significantly more accurate than {suite.join_names(beaten)} at {last} layers"
      if beaten
      else f"Mish is not significantly more accurate than any other at {last} layers"
    )
    + (f", and significantly less accurate than {suite.join_names(worse)}" if worse else "")
    + (", but it collapses too" if beaten and "mish" in collapsed else "")
    + "."
  )
  return {
    "claim": CLAIM,
    "verdict": verdict,
    "sentence": sentence,
    "drop_points": drop,
    "deepest": {o: tests[o].to_json() for o in others},
  }


def _steps_note(protocol: Mapping[str, Any]) -> list[str]:
  """For a protocol shorter than the paper's: how much shorter, and what that means."""
  full = PROTOCOLS["full"]
  paper_steps = full.epochs * (60000 // full.batch_size)
  steps = protocol["epochs"] * ((protocol["train_limit"] or 60000) // protocol["batch_size"])
  if steps >= paper_steps:
    return []
  return [
    f"This protocol trains {steps:,} SGD steps per run, {paper_steps / steps:.0f}x fewer than the "
    f"paper's 10 epochs of MNIST ({paper_steps:,}), so its accuracies and ours are not "
    "comparable in absolute terms: compare the activations with each other, and the trends.",
    "",
  ]


def section(results: Mapping[str, Any], link_prefix: str = "") -> list[str]:
  """The report's section: protocol, ours beside the paper's by depth, the verdict, the figure."""
  protocol, activations = results["protocol"], results["activations"]
  summary = results["summary"]
  rows = []
  for d in results["depths"]:
    row = [str(d["layers"]), str(d["dense_layers"])]
    for activation in activations:
      ours = summary[activation][str(d["layers"])]
      published = ours["published"]
      std = "" if ours["std"] is None else f" ± {ours['std']:.1f}"
      row += [f"{ours['mean']:.1f}{std}", "—" if published is None else f"{published:g}"]
    rows.append(row)
  headers = ["layers", "hidden dense"]
  for activation in activations:
    headers += [f"{activation} ours", f"{activation} paper"]
  return [
    "## Depth: test accuracy (%) vs layers",
    "",
    f"Protocol **{protocol['name']}**: {protocol['description']}. Counting: "
    f"{results['layer_count']}.",
    "",
    report.markdown_table(headers, rows),
    "",
    f"Ours: mean ± std over {protocol['seeds']} seeds (protocol {protocol['name']}); paper: read "
    "off its depth figure (— where it shows no value).",
    "",
    *_steps_note(protocol),
    f"Claim: {results['claim']['claim']} Verdict: **{results['claim']['verdict']}**. "
    f"{results['claim']['sentence']}",
    "",
    f"![Test accuracy vs layers, ours (mean ± std) and the paper's]({link_prefix}{FIGURE})",
  ]


def write_report(results: Mapping[str, Any], out: Path) -> None:
  """report.md: the section, then every run and the environment."""
  meta = results["metadata"]
  runs = [
    [
      d["layers"],
      r["activation"],
      r["seed"],
      f"{100 * r['test_accuracy']:.2f}",
      f"{r['test_loss']:.3f}",
      f"{100 * r['train_accuracy']:.2f}",
      f"{r['epoch_time_s']:.1f}",
      f"{r['compile_time_s']:.1f}",
      f"{r['params']:,}",
    ]
    for d in results["depths"]
    for r in d["runs"]
  ]
  lines = [
    "# Depth (the Mish paper's deep-network test)",
    "",
    report.describe_environment(meta),
    "",
    *section(results),
    "",
    "## Time per epoch",
    "",
    f"Training seconds per epoch, mean over seeds (compilation excluded; protocol "
    f"{results['protocol']['name']}, on a machine shared with other jobs).",
    "",
    report.markdown_table(
      ["layers", *results["activations"]],
      [
        [
          d["layers"],
          *(f"{d['summary'][a]['epoch_time_s']:.1f}" for a in results["activations"]),
        ]
        for d in results["depths"]
      ],
    ),
    "",
    "## Every run",
    "",
    f"Protocol {results['protocol']['name']}. Train accuracy is over the last epoch, with "
    "dropout on; s/epoch excludes compilation.",
    "",
    report.markdown_table(
      [
        "layers",
        "activation",
        "seed",
        "test acc %",
        "test loss",
        "train acc %",
        "s/epoch",
        "compile s",
        "params",
      ],
      runs,
    ),
    "",
  ]
  (out / "report.md").write_text("\n".join(lines))


def plot(results: Mapping[str, Any], path: Path) -> None:
  """Test accuracy vs layers: ours (mean, std bars) solid, the paper's dashed with open marks."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for activation in results["activations"]:
    by_depth = results["summary"][activation]
    layers = [int(k) for k in by_depth]
    means = [v["mean"] for v in by_depth.values()]
    stds = [v["std"] or 0.0 for v in by_depth.values()]
    line = ax.errorbar(layers, means, yerr=stds, marker="o", capsize=3, label=f"{activation} ours")
    published = PUBLISHED.get(activation)
    if published:
      ax.plot(
        list(published),
        list(published.values()),
        linestyle="--",
        marker="o",
        markerfacecolor="none",
        color=line[0].get_color(),
        label=f"{activation} paper",
      )
  ax.axhline(10, color="gray", linestyle=":", label="chance (10%)")
  ax.set(
    title=f"Test accuracy vs layers (protocol {results['protocol']['name']})",
    xlabel="layers (2 convs + hidden dense + head)",
    ylabel="test accuracy (%)",
  )
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  report.save_figure(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
  """The command line of this experiment alone (`paper.py`'s, without --only)."""
  return suite.main(argv, (sys.modules[__name__],), prog="python experiments/depth.py")


if __name__ == "__main__":
  sys.exit(main())
