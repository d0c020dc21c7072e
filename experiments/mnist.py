"""Mish vs ReLU vs Swish on MNIST: a Keras-style CNN trained with each, over several seeds.

Run the default comparison (full MNIST, offline once `python experiments/data.py fetch` has run):

  python experiments/mnist.py

It trains the pooled Keras-style CNN of `training.cnn` (225,034 parameters) with relu, swish and
mish, 3 seeds each, 3 epochs each (Adam, warmup + cosine, peak 3e-3, batch 64), and writes
results.json, report.md and PNG plots into runs/mnist-<timestamp>/.
Expected: mean test accuracy 99.1-99.2% for each activation (measured on 2026-11-27: relu 99.14%,
swish 99.18%, mish 99.19%, std 0.03-0.04 points, the same to the digit in two runs; no difference
significant at 0.05) in 15-18 minutes on a 2-core x86 CPU shared with other jobs (measured: 15.7
and 17.4), about 9 when it is idle (estimated): 27 epochs of 30-40 s shared, 16-18 s idle (26-29 s
of CPU time over both cores; mish 1.09x relu's, swish 1.08x), plus 2-7 s to compile each
activation's train step.

Smaller and larger runs:

  python experiments/mnist.py --train-limit 2000 --epochs 1 --seeds 1   # a smoke test, ~1 min
  python experiments/mnist.py --activations relu,swish,mish --seeds 5 --epochs 5 --out DIR

An interrupted run continues with the same command plus `--resume --out DIR`: finished runs are
skipped and the interrupted one restarts from its last epoch's checkpoint.

Every device trains data-parallel (the batch is sharded over a `jax.sharding.Mesh`, the
parameters replicated); with `--distributed`, every host of a multi-host job runs the same command
and joins through `jax.distributed.initialize` first.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
  # Run as `python experiments/mnist.py`: make `experiments.*` importable as with `python -m`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402  (after the path fix above)
import numpy as np  # noqa: E402

import mish_jax  # noqa: E402
from experiments import cli, data, training  # noqa: E402

_REPO_ROOT = Path(__file__).resolve().parents[1]
# Measured on a 2-core CPU, see the module docstring.
EXPECTED_RESULT = (
  "mean test accuracy 99.1-99.2% for each of relu, swish and mish (measured: 99.14%, 99.18%, "
  "99.19%) in 15-18 minutes on a 2-core CPU shared with other jobs (measured), about 9 when "
  "it is idle (16-18 s per epoch)."
)
BASELINE = "relu"
DEFAULTS = training.Config()
DEFAULT_ACTIVATIONS = ("relu", "swish", "mish")
DEFAULT_SEEDS = 3
EVAL_BATCH_SIZE = 250  # rounded up to a multiple of the device count; the fastest on CPU
PLOTS = {
  "learning_curves.png": "Learning curves (mean over seeds, min-max band)",
  "confusion_matrices.png": "Test confusion matrices, errors only (summed over seeds)",
  "class_counts.png": "Examples per class",
  "activations.png": "The activations and their derivatives",
}


def make_parser() -> argparse.ArgumentParser:
  """The command line, with every flag explained in --help."""
  parser = cli.ArgumentParser(
    prog="python experiments/mnist.py",
    description=__doc__.split("\n\n")[0],
    epilog=(
      f"The default run: {EXPECTED_RESULT} Exit status 2 on a usage error (bad flag, missing "
      "data, unwritable --out)."
    ),
  )
  parser.add_argument(
    "--activations",
    type=cli.names_from(mish_jax.ACTIVATIONS, "activation"),
    default=DEFAULT_ACTIVATIONS,
    help=f"comma-separated activations to compare, from {', '.join(mish_jax.ACTIVATIONS)} "
    f"(default: {','.join(DEFAULT_ACTIVATIONS)}); p-values are against {BASELINE}",
  )
  parser.add_argument(
    "--seeds",
    type=cli.positive_int,
    default=DEFAULT_SEEDS,
    help=f"runs per activation, with seeds 0..N-1 (default: {DEFAULT_SEEDS})",
  )
  parser.add_argument(
    "--epochs",
    type=cli.positive_int,
    default=DEFAULTS.epochs,
    help="epochs per run (default: %(default)s)",
  )
  parser.add_argument(
    "--batch-size",
    type=cli.positive_int,
    default=DEFAULTS.batch_size,
    help="global batch size, divisible by the device count (default: %(default)s)",
  )
  parser.add_argument(
    "--learning-rate",
    type=cli.positive_float,
    default=DEFAULTS.learning_rate,
    help="peak learning rate of Adam's warmup + cosine schedule (default: %(default)s)",
  )
  parser.add_argument(
    "--train-limit",
    type=cli.positive_int,
    default=None,
    help="train on the first N training images only (default: all 60,000); the test set "
    "stays whole",
  )
  parser.add_argument(
    "--dataset",
    default=DEFAULTS.dataset,
    choices=("mnist", "fashion_mnist"),
    help="the dataset (default: %(default)s)",
  )
  parser.add_argument(
    "--data-dir",
    type=Path,
    default=None,
    help="the TFDS data dir that `python experiments/data.py fetch` fills "
    f"(default: {data.DEFAULT_DATA_DIR})",
  )
  parser.add_argument(
    "--out",
    type=Path,
    default=None,
    help="output folder for results.json, report.md, the PNG plots and checkpoints "
    "(default: runs/mnist-<timestamp> in the repository)",
  )
  parser.add_argument(
    "--resume",
    action="store_true",
    help="continue the run in --out: skip its finished (activation, seed) runs and restart the "
    "interrupted one from its last checkpoint; use the same flags as the first time",
  )
  parser.add_argument(
    "--quiet", action="store_true", help="no progress bars, model summary or per-run lines"
  )
  parser.add_argument(
    "--distributed",
    action="store_true",
    help="first join a multi-host job with jax.distributed.initialize(); every host runs the "
    "same command, and the settings below, where not given, come from the cluster (SLURM, Open "
    "MPI, Kubernetes, Cloud TPU) or, for the coordinator, JAX_COORDINATOR_ADDRESS",
  )
  parser.add_argument(
    "--coordinator-address", default=None, help="with --distributed: HOST:PORT of process 0"
  )
  parser.add_argument(
    "--num-processes",
    type=cli.positive_int,
    default=None,
    help="with --distributed: how many hosts",
  )
  parser.add_argument(
    "--process-id",
    type=int,
    default=None,
    help="with --distributed: this host's index, 0..N-1 (0 writes the results)",
  )
  return parser


# --------------------------------------------------------------------------------------------------
# The report


def _pct(x: float | None) -> str:
  return "n/a" if x is None else f"{100 * x:.2f}%"


def _p(test: Mapping[str, Any] | None) -> str:
  if test is None:
    return "—"
  return f"n/a ({test['reason']})" if test["p_value"] is None else f"{test['p_value']:.3g}"


def _compare(runs: Sequence[Mapping[str, Any]], a: str, b: str) -> str:
  """One honest sentence on whether `a` beats `b` in test accuracy."""
  acc = {name: [r["test_accuracy"] for r in runs if r["activation"] == name] for name in (a, b)}
  test = training.welch_test(acc[a], acc[b])
  diff = 100 * (np.mean(acc[a]) - np.mean(acc[b]))
  means = f"{_pct(np.mean(acc[a]))} vs {_pct(np.mean(acc[b]))} ({diff:+.2f} points"
  if test["p_value"] is None:
    return f"{a} vs {b}: {means}); no p-value: {test['reason']}, so no verdict."
  means += f", Welch p = {test['p_value']:.3g})"
  if test["p_value"] >= 0.05:
    return f"{a} vs {b}: {means}: not significant at 0.05, so {a} does not beat {b} here."
  verdict = "beats" if diff > 0 else "is worse than"
  return f"{a} vs {b}: {means}: significant at 0.05, {a} {verdict} {b}."


def write_report(
  results: Mapping[str, Any], dataset: data.Dataset, model_summary: str, out: Path
) -> None:
  """Writes report.md into `out`: the verdict, the tables, the data, the model and the plots."""
  meta, runs, summary = results["metadata"], results["runs"], results["summary"]
  names = list(summary)
  lines = [
    f"# {', '.join(names)} on {dataset.name}",
    "",
    f"{meta['date']} on {meta['device']} (x{meta['device_count']}), jax {meta['versions']['jax']}, "
    f"flax {meta['versions']['flax']}, optax {meta['versions']['optax']}.",
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
    if name != BASELINE and s[f"epoch_time_vs_{BASELINE}"] is not None:
      ratio, cpu_ratio = s[f"epoch_time_vs_{BASELINE}"], s[f"epoch_cpu_time_vs_{BASELINE}"]
      lines.append(
        f"- {name} costs {s['epoch_time_s']:.1f} s per epoch, {ratio:.2f}x {BASELINE}'s "
        f"{summary[BASELINE]['epoch_time_s']:.1f} s ({100 * (ratio - 1):+.0f}%); in process CPU "
        f"time, which other load on the machine disturbs less, {cpu_ratio:.2f}x."
      )
  lines += ["", "## Test results", ""]
  rows = []
  for name in names:
    s = summary[name]
    acc, f1 = s["test_accuracy"], s["test_macro_f1"]
    ci = "n/a" if acc["ci_low"] is None else f"[{_pct(acc['ci_low'])}, {_pct(acc['ci_high'])}]"
    std = "n/a" if acc["std"] is None else f"{100 * acc['std']:.2f}"
    f1_std = "" if f1["std"] is None else f" ± {f1['std']:.4f}"
    ratio, cpu_ratio = s[f"epoch_time_vs_{BASELINE}"], s[f"epoch_cpu_time_vs_{BASELINE}"]
    rows.append(
      [
        name,
        s["n"],
        _pct(acc["mean"]),
        std,
        ci,
        _p(s.get(f"test_accuracy_vs_{BASELINE}")),
        f"{f1['mean']:.4f}{f1_std}",
        _p(s.get(f"test_macro_f1_vs_{BASELINE}")),
        f"{s['epoch_time_s']:.1f}",
        "n/a" if ratio is None else f"{ratio:.2f}x",
        f"{s['epoch_cpu_time_s']:.1f}",
        "n/a" if cpu_ratio is None else f"{cpu_ratio:.2f}x",
        f"{s['compile_time_s']:.1f}",
      ]
    )
  lines.append(
    training.markdown_table(
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
    training.markdown_table(
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
          r["activation"],
          r["seed"],
          _pct(r["test_accuracy"]),
          f"{r['test_macro_f1']:.4f}",
          f"{r['epoch_time_s']:.1f}",
          f"{r['epoch_cpu_time_s']:.1f}",
          f"{r['compile_time_s']:.1f}",
          f"{r['params']:,}",
        ]
        for r in runs
      ],
    ),
    "",
    "### Per-class test F1 (mean over seeds)",
    "",
  ]
  per_class = {
    name: np.mean([r["test_per_class_f1"] for r in runs if r["activation"] == name], axis=0)
    for name in names
  }
  lines.append(
    training.markdown_table(
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
    training.markdown_table(
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
  runs = results["runs"]
  training.plot_learning_curves(runs, out / "learning_curves.png")
  training.plot_confusion_matrices(runs, dataset.class_names, out / "confusion_matrices.png")
  training.plot_class_counts(dataset, out / "class_counts.png")
  training.plot_activations(list(results["summary"]), out / "activations.png")


# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the comparison; returns the exit status (usage errors exit with 2)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = make_parser()
  args = parser.parse_args(argv)
  if args.distributed:
    if args.out is None:
      parser.error("--distributed needs --out: every host writes its checkpoints there")
    # CPUs need a collectives implementation across processes; GPUs and TPUs bring their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(  # before anything touches a device
      coordinator_address=args.coordinator_address,
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  mesh = training.make_mesh()
  devices = mesh.devices.size
  if args.batch_size % devices:
    parser.error(f"--batch-size {args.batch_size} is not divisible by the {devices} devices")
  if args.train_limit is not None and args.train_limit < args.batch_size:
    parser.error(f"--train-limit {args.train_limit} is smaller than --batch-size {args.batch_size}")
  out = args.out or _REPO_ROOT / "runs" / datetime.datetime.now().strftime("mnist-%Y%m%d-%H%M%S")
  cli.prepare_out(parser, out, args.resume or jax.process_index() > 0)  # process 0 checks
  try:
    dataset = data.load(args.dataset, data_dir=args.data_dir, train_limit=args.train_limit)
  except data.DataError as err:
    parser.error(str(err))

  base = dataclasses.replace(
    DEFAULTS,
    dataset=args.dataset,
    data_dir=None if args.data_dir is None else str(args.data_dir),
    train_limit=args.train_limit,
    epochs=args.epochs,
    batch_size=args.batch_size,
    eval_batch_size=math.ceil(EVAL_BATCH_SIZE / devices) * devices,
    learning_rate=args.learning_rate,
  )
  config = {
    key: value for key, value in base.to_json().items() if key not in ("activation", "seed")
  }
  metadata = training.environment(
    ["python", "experiments/mnist.py", *map(shlex.quote, argv)],
    {**config, "activations": list(args.activations), "seeds": args.seeds},
  )
  model = training.build_model(base, dataset.train_images.shape[1:], dataset.num_classes)
  summary = training.model_summary(model, dataset.train_images.shape[1:])
  log = (lambda line: None) if args.quiet or jax.process_index() else print
  log(f"{dataset.name}: {len(dataset.train_labels):,} train / {len(dataset.test_labels):,} test")
  log(f"model ({base.model}):\n{summary}")
  log(f"{devices} device(s): {metadata['device']}; writing to {out}")
  try:
    results = training.run_sweep(
      base,
      args.activations,
      range(args.seeds),
      out,
      dataset=dataset,
      metadata=metadata,
      resume=args.resume,
      mesh=mesh,
      progress=not args.quiet and sys.stderr.isatty(),
      baseline=BASELINE,
      log=log,
    )
  except ValueError as err:  # a --resume of another config
    parser.error(str(err))
  if jax.process_index() == 0:
    write_report(results, dataset, summary, out)
    write_plots(results, dataset, out)
  for name, s in results["summary"].items():
    acc = s["test_accuracy"]
    std = "" if acc["std"] is None else f" ± {100 * acc['std']:.2f}"
    print(
      f"{name}: test accuracy {_pct(acc['mean'])}{std} ({s['n']} runs), "
      f"{s['epoch_time_s']:.1f} s/epoch"
    )
  print(f"wrote {out / 'results.json'}, {out / 'report.md'} and the plots")
  return 0


if __name__ == "__main__":
  sys.exit(main())
