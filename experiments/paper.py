"""The Mish paper's small experiments (Misra 2019), rerun with this project's training code.

  python experiments/paper.py --quick             # everything, tiny: a few minutes on a CPU
  python experiments/paper.py --protocol cpu      # reduced: about 60-90 minutes on 2 CPU cores
  python experiments/paper.py --protocol full     # the paper's: est. under an hour on a GPU

Three experiments, each also runnable alone with the same flags (e.g. `experiments/depth.py`):

* depth (`experiments/depth.py`): test accuracy of a conv + deep dense stack trained with plain
  SGD, as the stack grows from 15 to 25 layers;
* noise (`experiments/noise.py`): accuracy and loss of a CNN on test images with additive Gaussian
  noise, sigma 0..8;
* landscape (`experiments/landscape.py`): how rough a random MLP's output is over a 2-D grid.

Each writes its own folder under --out (results.json, report.md, PNG figures); this script then
collates them into --out/report.md and --out/results.json: our numbers as mean ± std over seeds
beside the published ones, and a verdict on each of the paper's claims computed from the numbers.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

if __package__ in (None, ""):
  # Run as `python experiments/paper.py`: make `experiments.*` importable as with `python -m`.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402  (after the path fix above)
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import mish_jax  # noqa: E402
from experiments import cli, data, training  # noqa: E402

_REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("depth", "noise", "landscape")
PROTOCOL_NAMES = ("quick", "cpu", "full")
DEFAULT_ACTIVATIONS = ("relu", "swish", "mish")
VERDICTS = ("holds", "partly holds", "does not hold", "undetermined")
PAPER = "Misra, Mish: A Self Regularized Non-Monotonic Activation Function (arXiv:1908.08681, 2019)"

# --------------------------------------------------------------------------------------------------
# Helpers shared by the three experiments


class UsageError(Exception):
  """A run that cannot go ahead as asked (e.g. a --resume with other flags); exit status 2."""


def check_resume(results_path: Path, expected: Mapping[str, Any]) -> dict[str, Any] | None:
  """The results a resumed run continues, after checking that they were made as `expected`.

  Args:
    results_path: the experiment's results.json (absent: nothing to resume).
    expected: {key: value} that the stored results must match, e.g. the protocol.

  Returns:
    The stored results, or None when there are none.

  Raises:
    UsageError: the stored results were made with other settings.
  """
  if not results_path.exists():
    return None
  stored = json.loads(results_path.read_text())
  expected = json.loads(json.dumps(expected))  # tuples stored as lists
  for key, value in expected.items():
    if stored.get(key) != value:
      raise UsageError(
        f"{results_path} was made with another {key} ({stored.get(key)}); resume with the same "
        "flags or choose another --out"
      )
  return stored


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
  """'mean ± std' (sample std) of `values` times `scale`; just the mean for one value."""
  if not len(values):
    return "n/a"
  x = np.asarray(values, np.float64) * scale
  if len(x) < 2:
    return f"{x.mean():.{digits}f}"
  return f"{x.mean():.{digits}f} ± {x.std(ddof=1):.{digits}f}"


def compare(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
  """mean(a) - mean(b) and Welch's test; "significant" means p < 0.05.

  Returns:
    {"diff", "p_value", "significant", "reason"}: with p None (and its reason) when the test is
    undefined, e.g. fewer than 2 values in a group.
  """
  test = training.welch_test(a, b)
  diff = float(np.mean(a) - np.mean(b))
  significant = test["p_value"] is not None and test["p_value"] < 0.05
  return {"diff": diff, "p_value": test["p_value"], "significant": significant, **test}


def join_names(names: Sequence[str]) -> str:
  """'a', 'a and b', 'a, b and c'."""
  return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else list(names))


def p_text(comparison: Mapping[str, Any]) -> str:
  """'p = 0.012', or why there is no p-value."""
  p = comparison["p_value"]
  return f"no p-value: {comparison['reason']}" if p is None else f"Welch p = {p:.2g}"


def test_subset(dataset: data.Dataset, limit: int | None) -> data.Dataset:
  """`dataset` with only its first `limit` test images (all of them when None)."""
  if limit is None:
    return dataset
  return data.Dataset(
    name=dataset.name,
    train_images=dataset.train_images,
    train_labels=dataset.train_labels,
    test_images=dataset.test_images[:limit],
    test_labels=dataset.test_labels[:limit],
    class_names=dataset.class_names,
    source=dataset.source,
  )


def write_json(path: Path, obj: Any) -> None:
  """Writes JSON under a temporary name first, so an interruption never leaves half a file."""
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(json.dumps(obj, indent=2) + "\n")
  os.replace(tmp, path)


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


# --------------------------------------------------------------------------------------------------
# The command line


def _module(name: str) -> ModuleType:
  # Imported on use: the experiment modules import this one for the helpers above.
  return importlib.import_module(f"experiments.{name}")


def make_parser(prog: str, names: Sequence[str]) -> argparse.ArgumentParser:
  """The command line of paper.py (all of `names` selectable) or of one experiment's script."""
  protocols = "\n".join(
    f"  {protocol}:\n"
    + "\n".join(f"    {name}: {_module(name).PROTOCOLS[protocol].describe()}" for name in names)
    for protocol in PROTOCOL_NAMES
  )
  parser = cli.ArgumentParser(
    prog=prog,
    description=__doc__.split("\n\n")[0] if len(names) > 1 else _module(names[0]).__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=f"protocols:\n{protocols}\n\nExit status 2 on a usage error (bad flag, missing data, "
    "unwritable or non-empty --out).",
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
  if len(names) > 1:
    parser.add_argument(
      "--only",
      type=cli.names_from(EXPERIMENTS, "experiment"),
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


# --------------------------------------------------------------------------------------------------
# Running and collating


def run_all(
  protocols: Mapping[str, Any],
  out: Path,
  *,
  dataset: data.Dataset | None,
  activations: Sequence[str] = DEFAULT_ACTIVATIONS,
  resume: bool = False,
  progress: bool = False,
  log: Callable[[str], None] = print,
  command: str = "",
) -> dict[str, Any]:
  """Runs each experiment of `protocols` into `out`/<name>/ and writes the collated report.

  Args:
    protocols: experiment name -> its protocol (e.g. `depth.PROTOCOLS["cpu"]`), in report order.
    out: the output folder.
    dataset: MNIST, for depth and noise (None if only landscape runs).
    activations: names from `mish_jax.ACTIVATIONS`.
    resume: continue the runs already in `out`.
    progress: progress bars.
    log: where per-run lines go.
    command: the command line, for the report.

  Returns:
    The collated results (also in `out`/results.json). With `resume`, the first session's
    command and environment are kept, the later commands listed under "resumed_with", and the
    wall time of each experiment adds up over the sessions.
  """
  collated: dict[str, Any] = {
    "paper": PAPER,
    "command": command,
    "metadata": training.environment(shlex.split(command) or ["run_all"], {}),
    "resumed_with": [],
    "experiments": {},
  }
  previous = {}
  if resume and (out / "results.json").exists():
    first = json.loads((out / "results.json").read_text())
    previous = first["experiments"]
    collated.update(
      command=first["command"],
      metadata=first["metadata"],
      resumed_with=[*first.get("resumed_with", []), command],
    )
  for name, protocol in protocols.items():
    start = datetime.datetime.now()
    results = _module(name).run(
      protocol,
      out / name,
      dataset=dataset,
      activations=activations,
      resume=resume,
      progress=progress,
      log=log,
    )
    minutes = (datetime.datetime.now() - start).total_seconds() / 60
    minutes += previous.get(name, {}).get("wall_minutes", 0.0)
    log(
      f"{name}: {results['claim']['verdict']} ({minutes:.1f} min). {results['claim']['sentence']}"
    )
    collated["experiments"][name] = {
      "protocol": results["protocol"],
      "claim": results["claim"],
      "published": results["published"],
      "summary": results["summary"],
      "wall_minutes": minutes,
    }
    collated["experiments"][name]["sections"] = _module(name).section(results, f"{name}/")
    write_json(out / "results.json", collated)
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
    f"{meta['date']} on {meta['device']} ({meta['cpu_count']} CPU cores), jax "
    f"{meta['versions']['jax']}, flax {meta['versions']['flax']}. Protocol: "
    f"**{', '.join(protocols)}**. Command: `{collated['command']}`"
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
    training.markdown_table(
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


# --------------------------------------------------------------------------------------------------


def main(
  argv: Sequence[str] | None = None,
  names: Sequence[str] = EXPERIMENTS,
  prog: str = "python experiments/paper.py",
) -> int:
  """Runs the experiments `names` (all three for paper.py); returns the exit status.

  Usage errors (bad flags, missing data, an unusable --out, a --resume of other flags) print one
  line and exit with status 2.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = make_parser(prog, names)
  args = parser.parse_args(argv)
  if args.quick and args.protocol not in (None, "quick"):
    parser.error(f"--quick and --protocol {args.protocol} contradict each other: pass one")
  protocol = "quick" if args.quick else args.protocol or "full"
  only = getattr(args, "only", tuple(names))
  out = args.out or _REPO_ROOT / "runs" / datetime.datetime.now().strftime(
    f"paper-{protocol}-%Y%m%d-%H%M%S"
  )
  cli.prepare_out(parser, out, args.resume)
  dataset = None
  if any(_module(name).NEEDS_DATA for name in only):
    try:
      dataset = data.load("mnist", data_dir=args.data_dir)
    except data.DataError as err:
      parser.error(str(err))
  # Seeds of one (depth, activation) share a program: a persistent cache compiles it once.
  jax.config.update("jax_compilation_cache_dir", str(out / ".jax-cache"))
  log = (lambda line: None) if args.quiet else tqdm.write
  device = jax.devices()[0]
  if protocol == "full" and device.platform == "cpu":
    log("note: --protocol full on a CPU takes days; --protocol cpu is the reduced one")
  log(f"protocol {protocol} on {device.platform} ({device.device_kind}); writing to {out}")
  try:
    collated = run_all(
      {name: _module(name).PROTOCOLS[protocol] for name in only},
      out,
      dataset=dataset,
      activations=args.activations,
      resume=args.resume,
      progress=not args.quiet,
      log=log,
      command=" ".join(["python", prog.split()[-1], *map(shlex.quote, argv)]),
    )
  except UsageError as err:
    parser.error(str(err))
  for name, e in collated["experiments"].items():
    print(f"{name}: {e['claim']['verdict']}. {e['claim']['sentence']}")
  print(f"wrote {out / 'report.md'} and {out / 'results.json'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
