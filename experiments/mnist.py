"""Mish vs ReLU vs Swish on MNIST: a Keras-style CNN trained with each, over several seeds.

Run the default comparison (full MNIST, offline once `python experiments/data.py fetch` has run):

  python experiments/mnist.py

It trains the pooled Keras-style CNN of `models.cnn` (225,034 parameters) with relu, swish and
mish, 3 seeds each, 3 epochs each (Adam, warmup + cosine, peak 3e-3, batch 64), and writes
results.json, report.md and PNG plots into runs/mnist-<timestamp>/. The measured accuracies and
run time of a default run are in docs/mnist/report.md (the report this command writes).

Smaller and larger runs:

  python experiments/mnist.py --train-limit 2000 --epochs 1 --seeds 1   # a smoke test
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
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
  # Run as `python experiments/mnist.py`: make `experiments.*` importable as with `python -m`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402  (after the path fix above)

import mish_jax  # noqa: E402
from experiments import cli, data, mnist_report, models, report, sweep, train  # noqa: E402
from experiments.cli import Fault  # noqa: E402

PROG = "python experiments/mnist.py"
MEASURED = report.REPO_ROOT / "docs" / "mnist" / "results.json"  # the default run, measured
BASELINE = mnist_report.BASELINE
DEFAULT_CONFIG = train.Config()
DEFAULT_ACTIVATIONS = ("relu", "swish", "mish")
DEFAULT_SEEDS = 3
MAX_SEEDS, MAX_EPOCHS = 1000, 10000
EVAL_BATCH_SIZE = 250  # rounded up to a multiple of the device count; the fastest on CPU


def expected_result() -> str:
  """What the default run gives, read from its measured report (the one source of the figures)."""
  try:
    measured = json.loads(MEASURED.read_text())
    accuracies = ", ".join(
      f"{name} {100 * s['test_accuracy']['mean']:.2f}%" for name, s in measured["summary"].items()
    )
    minutes = measured["wall_time_s"] / 60
  except (OSError, ValueError, KeyError, TypeError):
    return "see docs/mnist/report.md."
  return (
    f"mean test accuracy {accuracies}, {minutes:.1f} minutes of training and evaluation, as "
    f"measured in docs/mnist/report.md (on {measured['metadata'].get('date', '?')[:10]})."
  )


def make_parser() -> argparse.ArgumentParser:
  """The command line, with every flag explained in --help."""
  parser = cli.ArgumentParser(
    prog="python experiments/mnist.py",
    description=__doc__.split("\n\n")[0],
    epilog=(
      f"The default run: {expected_result()} Exit status 2 on any expected failure (a bad "
      "flag, missing or damaged data, an unusable --out, a --resume that does not match, a "
      "damaged checkpoint, a failed distributed set-up), with one line on stderr."
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
    type=cli.int_in(1, MAX_SEEDS),
    default=DEFAULT_SEEDS,
    help=f"runs per activation, with seeds 0..N-1 (default: {DEFAULT_SEEDS})",
  )
  parser.add_argument(
    "--epochs",
    type=cli.int_in(1, MAX_EPOCHS),
    default=DEFAULT_CONFIG.epochs,
    help="epochs per run (default: %(default)s)",
  )
  parser.add_argument(
    "--batch-size",
    type=cli.positive_int,
    default=DEFAULT_CONFIG.batch_size,
    help="global batch size, divisible by the device count (default: %(default)s)",
  )
  parser.add_argument(
    "--learning-rate",
    type=cli.positive_float,
    default=DEFAULT_CONFIG.learning_rate,
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
    default=DEFAULT_CONFIG.dataset,
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
    type=cli.int_in(0, None),
    default=None,
    help="with --distributed: this host's index, 0..N-1 (0 writes the results)",
  )
  return parser


def _distributed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Joins the multi-host job that --distributed asks for, checking its flags first.

  Raises:
    Fault: a distributed flag without --distributed, a process id out of range, or a failed
      `jax.distributed.initialize`.
  """
  flags = {
    "--coordinator-address": args.coordinator_address,
    "--num-processes": args.num_processes,
    "--process-id": args.process_id,
  }
  given = [flag for flag, value in flags.items() if value is not None]
  if not args.distributed:
    if given:
      raise Fault(f"{', '.join(given)} need --distributed: pass it, or drop them")
    return
  if args.out is None:
    raise Fault("--distributed needs --out: every host writes its checkpoints there")
  if args.num_processes is not None and args.process_id is not None:
    if args.process_id >= args.num_processes:
      raise Fault(
        f"--process-id {args.process_id} is out of range for --num-processes "
        f"{args.num_processes}: use 0..{args.num_processes - 1}"
      )
  if args.coordinator_address is not None:
    _check_address(args.coordinator_address)
  # CPUs need a collectives implementation across processes; GPUs and TPUs bring their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(  # before anything touches a device
      coordinator_address=args.coordinator_address,
      num_processes=args.num_processes,
      process_id=args.process_id,
    )
  except (RuntimeError, ValueError) as err:
    raise Fault(
      f"--distributed: jax.distributed.initialize failed ({err}); check --coordinator-address "
      "(HOST:PORT of process 0, reachable from every host), --num-processes and --process-id"
    ) from None


def _check_address(address: str) -> None:
  """Refuses a --coordinator-address that is not HOST:PORT of a host that resolves.

  jax.distributed.initialize would otherwise wait minutes for a host that cannot exist.
  """
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise Fault(f"--coordinator-address {address!r} is not HOST:PORT (e.g. 10.0.0.1:1234)")
  try:
    socket.getaddrinfo(host.strip("[]"), int(port))
  except OSError as err:
    raise Fault(
      f"--coordinator-address {address}: host {host} does not resolve ({err}); give process "
      "0's address"
    ) from None


def _data_dir(path: Path | None) -> Path | None:
  """--data-dir as the config records it: None for the default, wherever it is spelled."""
  if path is None or path.expanduser().resolve() == data.DEFAULT_DATA_DIR.resolve():
    return None
  return path


def run(argv: Sequence[str]) -> int:
  """Runs the comparison of `argv`; a `Fault` is an expected failure (see `cli.guarded`)."""
  parser = make_parser()
  args = parser.parse_args(argv)
  if args.resume and args.out is None:
    raise Fault("--resume needs --out: the folder of the run to continue")
  _distributed(parser, args)
  mesh = train.make_mesh()
  devices = mesh.devices.size
  if args.batch_size % devices:
    parser.error(f"--batch-size {args.batch_size} is not divisible by the {devices} devices")
  if args.train_limit is not None and args.train_limit < args.batch_size:
    parser.error(f"--train-limit {args.train_limit} is smaller than --batch-size {args.batch_size}")
  out = args.out or report.REPO_ROOT / "runs" / datetime.datetime.now().strftime(
    "mnist-%Y%m%d-%H%M%S"
  )
  cli.prepare_out(out, resume=args.resume or jax.process_index() > 0)  # process 0 checks
  data_dir = _data_dir(args.data_dir)
  dataset = data.load(args.dataset, data_dir=data_dir, train_limit=args.train_limit)

  base = dataclasses.replace(
    DEFAULT_CONFIG,
    dataset=args.dataset,
    data_dir=None if data_dir is None else str(data_dir),
    train_limit=args.train_limit,
    epochs=args.epochs,
    batch_size=args.batch_size,
    eval_batch_size=math.ceil(EVAL_BATCH_SIZE / devices) * devices,
    learning_rate=args.learning_rate,
  )
  config = {
    key: value for key, value in base.to_json().items() if key not in ("activation", "seed")
  }
  metadata = report.environment(
    shlex.join(["python", "experiments/mnist.py", *argv]),
    {**config, "activations": list(args.activations), "seeds": args.seeds},
  )
  model = train.build_model(base, dataset.train_images.shape[1:], dataset.num_classes)
  summary = models.model_summary(model, dataset.train_images.shape[1:])
  log = (lambda line: None) if args.quiet or jax.process_index() else print
  log(f"{dataset.name}: {len(dataset.train_labels):,} train / {len(dataset.test_labels):,} test")
  log(f"model ({base.model}):\n{summary}")
  log(f"{devices} device(s): {metadata['device']['device_kind']}; writing to {out}")
  results = sweep.train_grid(
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
  if jax.process_index() == 0:
    mnist_report.write_report(results, dataset, summary, out)
    mnist_report.write_plots(results, dataset, out)
  for name, s in results["summary"].items():
    acc = s["test_accuracy"]
    std = "" if acc["std"] is None else f" ± {100 * acc['std']:.2f}"
    print(
      f"{name}: test accuracy {100 * acc['mean']:.2f}%{std} ({s['n']} runs), "
      f"{s['epoch_time_s']:.1f} s/epoch"
    )
  print(f"wrote {out / 'results.json'}, {out / 'report.md'} and the plots")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the comparison; returns the exit status (2, with one line, on an expected failure)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  return cli.guarded(lambda: run(argv), PROG)


if __name__ == "__main__":
  sys.exit(main())
