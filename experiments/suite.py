"""The paper experiments' shared interface, command line and collated report.

An experiment (`depth`, `noise`, `landscape`) is a module that offers the `Experiment` protocol:
its `NAME`, whether it `NEEDS_DATA`, its `PROTOCOLS` by name, `run(protocol, out, session)` and
`section(results)`. `main` runs any of them from the command line (`paper.py` all three, each
experiment's own script itself alone) into `--out/<name>/`, then collates their verdicts and
sections into `--out/results.json` and `--out/report.md`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
from tqdm import tqdm

import mish_jax
from experiments import cli, data, report, store
from experiments.cli import Fault

PROTOCOL_NAMES = ("quick", "cpu", "full")
DEFAULT_ACTIVATIONS = ("relu", "swish", "mish")
VERDICTS = ("holds", "partly holds", "does not hold", "undetermined")
PAPER = "Misra, Mish: A Self Regularized Non-Monotonic Activation Function (arXiv:1908.08681, 2019)"


@dataclasses.dataclass(frozen=True)
class Session:
  """What every experiment of one command shares.

  Attributes:
    dataset: MNIST (None when no experiment of the command needs data).
    activations: names from `mish_jax.ACTIVATIONS`.
    resume: continue the runs already in the output folder.
    progress: progress bars.
    log: where per-run lines go.
  """

  dataset: data.Dataset | None = None
  activations: tuple[str, ...] = DEFAULT_ACTIVATIONS
  resume: bool = False
  progress: bool = False
  log: Callable[[str], None] = print


class ProtocolSpec(Protocol):
  """An experiment's protocol: a frozen dataclass with a name and a one-line description."""

  name: str

  def describe(self) -> str: ...

  def to_json(self) -> dict[str, Any]: ...


class Experiment(Protocol):
  """What an experiment module offers (`depth`, `noise`, `landscape`)."""

  NAME: str
  NEEDS_DATA: bool
  PROTOCOLS: Mapping[str, ProtocolSpec]
  __doc__: str | None

  def run(self, protocol: Any, out: Path, session: Session) -> dict[str, Any]:
    """Runs `protocol` into `out`; returns its results (also in `out`/results.json), with
    "protocol", "claim", "published" and "summary"."""
    ...

  def section(self, results: Mapping[str, Any], link_prefix: str = "") -> list[str]:
    """The experiment's section of a report (figures linked under `link_prefix`)."""
    ...


# --------------------------------------------------------------------------------------------------
# Helpers of the experiments


def progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
  """A tqdm bar over runs; off a terminal it redraws at most every 30 s (log files stay short)."""
  return tqdm(
    total=total,
    desc=desc,
    unit="run",
    disable=not enabled,
    mininterval=1 if sys.stderr.isatty() else 30,
    dynamic_ncols=True,
  )


def limits_text(train_limit: int | None, test_limit: int | None) -> tuple[str, str]:
  """('the first 640', 'all 10,000'): how much of MNIST's train and test splits a protocol uses."""
  train = "all 60,000" if train_limit is None else f"the first {train_limit:,}"
  return train, "all 10,000" if test_limit is None else f"the first {test_limit:,}"


def join_names(names: Sequence[str]) -> str:
  """'a', 'a and b', 'a, b and c'."""
  return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else list(names))


def p_text(comparison: Any) -> str:
  """'Welch p = 0.012' of a `records.Comparison`, or why there is no p-value."""
  p = comparison.p_value
  return f"no p-value: {comparison.test.reason}" if p is None else f"Welch p = {p:.2g}"


# --------------------------------------------------------------------------------------------------
# The command line


def make_parser(
  prog: str, experiments: Sequence[Experiment], description: str | None = None
) -> argparse.ArgumentParser:
  """The command line of `experiments` (each selectable with --only when there are several)."""
  names = [e.NAME for e in experiments]
  protocols = "\n".join(
    f"  {protocol}:\n"
    + "\n".join(f"    {e.NAME}: {e.PROTOCOLS[protocol].describe()}" for e in experiments)
    for protocol in PROTOCOL_NAMES
  )
  parser = cli.ArgumentParser(
    prog=prog,
    description=description or experiments[0].__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=f"protocols:\n{protocols}\n\nExit status 2 on any expected failure (a bad flag, "
    "missing data, an unwritable or non-empty --out, a --resume that does not match or finds "
    "damaged results or checkpoints), with one line on stderr.",
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help="the smoke-test protocol (same as --protocol quick): a few minutes on a CPU",
  )
  parser.add_argument(
    "--protocol",
    choices=PROTOCOL_NAMES,
    default=None,
    help="how much to run (see below): quick, cpu (reduced, about 60-90 min on 2 CPU cores) or "
    "full (the paper's protocol, estimated under an hour on one GPU, days on a CPU; the "
    "default)",
  )
  if len(experiments) > 1:
    parser.add_argument(
      "--only",
      type=cli.names_from(names, "experiment"),
      default=tuple(names),
      help=f"comma-separated experiments to run (default: {','.join(names)})",
    )
  parser.add_argument(
    "--activations",
    type=cli.names_from(mish_jax.ACTIVATIONS, "activation"),
    default=DEFAULT_ACTIVATIONS,
    help=f"comma-separated activations, from {', '.join(mish_jax.ACTIVATIONS)} "
    f"(default: {','.join(DEFAULT_ACTIVATIONS)}); the claims need mish and at least one other",
  )
  parser.add_argument(
    "--out",
    type=Path,
    default=None,
    help="output folder (default: runs/paper-<protocol>-<timestamp> in the repository); it must "
    "be empty or absent unless --resume",
  )
  parser.add_argument(
    "--resume",
    action="store_true",
    help="continue an interrupted run in --out with the same flags: finished runs are kept and "
    "the interrupted training resumes from its last epoch's checkpoint",
  )
  parser.add_argument(
    "--data-dir",
    type=Path,
    default=None,
    help=f"the MNIST data dir that `python experiments/data.py fetch` fills "
    f"(default: {data.DEFAULT_DATA_DIR})",
  )
  parser.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")
  return parser


def compilation_cache_dir() -> Path:
  """This user's JAX compilation cache: never inside --out, where others' files may be resumed."""
  base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
  return base / "mish-jax" / f"jax-{jax.__version__}"


def main(
  argv: Sequence[str] | None,
  experiments: Sequence[Experiment],
  prog: str,
  description: str | None = None,
) -> int:
  """Runs `experiments` from the command line `argv`; returns the exit status.

  Expected failures (bad flags, missing data, an unusable --out, a --resume of other flags or
  of damaged files) print one line and exit with status 2.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  return cli.guarded(lambda: _run(argv, experiments, prog, description), prog)


def expected(protocol: ProtocolSpec, session: Session) -> dict[str, Any]:
  """The settings that an experiment's stored results must match for a resume."""
  return {"protocol": protocol.to_json(), "activations": list(session.activations)}


def _run(
  argv: Sequence[str], experiments: Sequence[Experiment], prog: str, description: str | None
) -> int:
  parser = make_parser(prog, experiments, description)
  args = parser.parse_args(argv)
  if args.quick and args.protocol not in (None, "quick"):
    parser.error(f"--quick and --protocol {args.protocol} contradict each other: pass one")
  if args.resume and args.out is None:
    raise Fault("--resume needs --out: the folder of the run to continue")
  protocol = "quick" if args.quick else args.protocol or "full"
  only = getattr(args, "only", [e.NAME for e in experiments])
  chosen = [e for e in experiments if e.NAME in only]
  out = args.out or report.REPO_ROOT / "runs" / datetime.datetime.now().strftime(
    f"paper-{protocol}-%Y%m%d-%H%M%S"
  )
  cli.prepare_out(out, resume=args.resume)
  session = Session(None, tuple(args.activations), args.resume, not args.quiet, None)
  for e in chosen:  # a resume of other settings fails now, not after hours of other work
    if args.resume and (out / e.NAME / "results.json").exists():
      store.read_matching(out / e.NAME / "results.json", expected(e.PROTOCOLS[protocol], session))
  dataset = None
  if any(e.NEEDS_DATA for e in chosen):
    dataset = data.load("mnist", data_dir=args.data_dir)
  # Seeds of one (depth, activation) share a program: a persistent cache compiles it once.
  jax.config.update("jax_compilation_cache_dir", str(compilation_cache_dir()))
  log = (lambda line: None) if args.quiet else tqdm.write
  device = jax.devices()[0]
  if protocol == "full" and device.platform == "cpu":
    log("note: --protocol full on a CPU takes days; --protocol cpu is the reduced one")
  log(f"protocol {protocol} on {device.platform} ({device.device_kind}); writing to {out}")
  collated = run_all(
    {e: e.PROTOCOLS[protocol] for e in chosen},
    out,
    dataclasses.replace(session, dataset=dataset, log=log),
    command=shlex.join(["python", prog.split()[-1], *argv]),
  )
  for name, e in collated["experiments"].items():
    print(f"{name}: {e['claim']['verdict']}. {e['claim']['sentence']}")
  print(f"wrote {out / 'report.md'} and {out / 'results.json'}")
  return 0


# --------------------------------------------------------------------------------------------------
# Running and collating


def run_all(
  protocols: Mapping[Experiment, Any], out: Path, session: Session, command: str = ""
) -> dict[str, Any]:
  """Runs each experiment of `protocols` into `out`/<name>/ and writes the collated report.

  Args:
    protocols: experiment -> its protocol (e.g. `depth.PROTOCOLS["cpu"]`), in report order.
    out: the output folder.
    session: the data, activations and options.
    command: the command line, for the report.

  Returns:
    The collated results (also in `out`/results.json). With `session.resume`, the first
    session's command and environment are kept, the later commands listed under "resumed_with",
    the wall time of each experiment adds up over the sessions, and the experiments this
    command does not run keep their stored entries.

  Raises:
    Fault: the stored collated results are damaged.
  """
  collated: dict[str, Any] = {
    "paper": PAPER,
    "command": command,
    "metadata": report.environment(command or "run_all"),
    "resumed_with": [],
    "experiments": {},
  }
  previous: dict[str, Any] = {}
  path = out / "results.json"
  if session.resume and path.exists():
    first = store.read_json(path, start_over="choose another --out, or delete it to start over")
    if not isinstance(first.get("experiments"), dict) or "metadata" not in first:
      raise Fault(f"{path} holds results of another shape; choose another --out")
    previous = first["experiments"]
    collated.update(
      command=first.get("command", ""),
      metadata=first["metadata"],
      resumed_with=[*first.get("resumed_with", []), command],
      experiments=dict(previous),
    )
  for experiment, protocol in protocols.items():
    name = experiment.NAME
    start = datetime.datetime.now()
    results = experiment.run(protocol, out / name, session)
    minutes = (datetime.datetime.now() - start).total_seconds() / 60
    minutes += previous.get(name, {}).get("wall_minutes", 0.0)
    claim = results["claim"]
    session.log(f"{name}: {claim['verdict']} ({minutes:.1f} min). {claim['sentence']}")
    collated["experiments"][name] = {
      "protocol": results["protocol"],
      "claim": claim,
      "published": results["published"],
      "summary": results["summary"],
      "wall_minutes": minutes,
      "sections": experiment.section(results, f"{name}/"),
    }
    store.write_json(path, collated)
    write_report(collated, out)
  return collated


def write_report(collated: Mapping[str, Any], out: Path) -> None:
  """Writes the collated report.md: the verdicts first, then each experiment's section."""
  meta = collated["metadata"]
  experiments = collated["experiments"]
  protocols = sorted({e["protocol"]["name"] for e in experiments.values()})
  lines = [
    "# The Mish paper's claims, rerun",
    "",
    f"Paper: {collated['paper']}. Published values are the paper's, read off its figures where "
    "it gives no table; ours are mean ± std over seeds (sample std).",
    "",
    report.describe_environment(meta)
    + f" Protocol: **{', '.join(protocols)}**. Command: `{collated['command']}`"
    + "".join(
      f", resumed with `{c}`" + (f" ({n} times)" if n > 1 else "")
      for c, n in collections.Counter(collated["resumed_with"]).items()
    )
    + ".",
    "",
  ]
  if "full" not in protocols:
    lines += [
      "> These numbers come from a reduced protocol (see each table); the full protocol "
      "(`--protocol full`: every depth 15..25, 10 epochs, all of MNIST) is pending a GPU.",
      "",
    ]
  lines += ["## Verdicts", ""]
  lines += [
    f"- **{name}** ({e['protocol']['name']} protocol): **{e['claim']['verdict']}**. "
    f"{e['claim']['sentence']}"
    for name, e in experiments.items()
  ]
  for e in experiments.values():
    lines += ["", *e["sections"]]
  lines += [
    "",
    "## Timing",
    "",
    report.markdown_table(
      ["experiment", "protocol", "wall time (min)"],
      [
        [name, e["protocol"]["name"], f"{e['wall_minutes']:.1f}"] for name, e in experiments.items()
      ],
    ),
    "",
    f"Wall time on the machine above, shared with other jobs, summed over the run's "
    f"{1 + len(collated['resumed_with'])} session(s); a resumed session redoes no finished run.",
    "",
  ]
  (out / "report.md").write_text("\n".join(lines))
