"""Benchmarks mish-jax against jax.nn: elementwise ops, a fused dense layer, a train step, memory.

Sections, each checked against float64 references inside the run:

1. elementwise: jax.nn.relu, jax.nn.silu, jax.nn.mish and mish_jax.mish (XLA, and Pallas where it
   compiles), forward and forward+backward, over sizes and dtypes, against a copy of the same
   size (the memory-bound limit).
2. fused: mish(x @ w + b) unfused in XLA and by mish_jax.linear_mish, against a roofline from a
   peak matmul and a copy measured in the same rounds.
3. training: the MNIST CNN's train step per activation, as ratios to ReLU.
4. memory: a deep MLP train step's compiled temp bytes and step time per activation.

Writes DIR/results.json (every figure, with the device and versions), DIR/report.md and PNG plots.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # Run as a script: import `benchmarks` (and `experiments`) from the repo.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
from tqdm import tqdm

from benchmarks import elementwise, fused, memory, plots, timing, training_cost
from benchmarks import report as bench_report
from experiments import cli, report, store

PROG = "python benchmarks/run.py"
REPO_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("elementwise", "fused", "training", "memory")
DTYPES = (jnp.float32, jnp.bfloat16)
# The full run's memory-heavy fused shape has M = 65536; on a CPU that alone would take minutes.
HEAVY_M = 65536
CPU_HEAVY_M = 16384


def build_sections(quick: bool, names: Sequence[str]) -> dict[str, Any]:
  """The sections to run, sized for `--quick` or the full run on the default backend.

  Args:
    quick: tiny sizes that run in seconds, for smoke tests.
    names: which of `SECTIONS` to build.

  Returns:
    name -> the section object (with `cases()` and `results()`).
  """
  cpu = jax.default_backend() == "cpu"
  if quick:
    budget = timing.Budget(target_s=0.01, min_samples=3, max_samples=20)
    heavy_m, notes = 128, ["--quick: tiny shapes"]
    sections = {
      "elementwise": lambda: elementwise.Elementwise((2**10, 2**12), DTYPES, budget, 1024, 1024),
      "fused": lambda: fused.Fused(
        [(heavy_m, 64, 128)], DTYPES, budget, (128,), 2**16, (128, 64, 128), notes
      ),
      # One conv block and no dropout: the RNG of dropout triples the compile time.
      "training": lambda: training_cost.TrainingCost(
        8, budget, {"features": (8,), "dense": 16, "dropout": (0.0, 0.0)}
      ),
      "memory": lambda: memory.Memory(3, 64, 32, budget),
    }
  else:
    heavy_m = CPU_HEAVY_M if cpu else HEAVY_M
    notes = (
      [
        f"M = {CPU_HEAVY_M} instead of {HEAVY_M} in the memory-heavy shape on CPU, to keep the "
        "full run within about 15 minutes"
      ]
      if cpu
      else []
    )
    shapes = [(1024, 1024, 1024), (4096, 512, 1024), (heavy_m, 256, 1024)]
    if not cpu:
      shapes.insert(1, (8192, 8192, 8192))
    sections = {
      "elementwise": lambda: elementwise.Elementwise(
        [2**e for e in range(12, 27)], DTYPES, timing.Budget(0.3, 5, 200), 2**14, 2**12
      ),
      "fused": lambda: fused.Fused(
        shapes,
        DTYPES,
        timing.Budget(0.3, 5, 100),
        (1024, 2048) if cpu else (4096, 8192),
        2**24 if cpu else 2**28,
        (256, 128, 256),
        notes,
      ),
      "training": lambda: training_cost.TrainingCost(128, timing.Budget(2.0, 30, 200), {}),
      "memory": lambda: memory.Memory(16, 1024, 4096, timing.Budget(1.0, 5, 20)),
    }
  return {name: sections[name]() for name in names}


def environment(argv: Sequence[str], allocator: str | None) -> dict[str, Any]:
  """The experiments' run-environment record (`experiments.report.environment`), plus the
  allocator setting."""
  env = report.environment(shlex.join(["python", "benchmarks/run.py", *argv]))
  return {**env, "allocator": allocator or "default"}


def make_parser() -> argparse.ArgumentParser:
  """The command line, with every flag explained in --help."""
  parser = cli.ArgumentParser(
    prog=PROG,
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog="Exit status: 0 when every case ran and passed its check, 1 when one failed (the "
    "outputs are still written), 2 on a usage error. On a CPU the Pallas kernels run in "
    "interpret mode: they are checked for correctness on small inputs and not timed.",
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help="tiny sizes and few samples: seconds to a minute, a smoke test of the whole pipeline "
    "(its timings mean little)",
  )
  parser.add_argument(
    "--out",
    type=Path,
    default=None,
    help="output folder, new or empty, for results.json, report.md and the PNG plots "
    "(default: runs/bench-<timestamp> in the repository)",
  )
  parser.add_argument(
    "--sections",
    type=cli.names_from(SECTIONS, "section"),
    default=SECTIONS,
    help=f"comma-separated sections to run, from {','.join(SECTIONS)} (default: all)",
  )
  parser.add_argument(
    "--system-malloc",
    action="store_true",
    help="leave glibc's allocator as it is; by default it is told to keep freed memory, so "
    "arrays of 64 MiB and more are not page-faulted in anew on every call (on CPU)",
  )
  return parser


def _failures(results: dict[str, Any]) -> list[str]:
  """Every failed check, as 'section: what'."""
  failed = []
  for section in SECTIONS:
    data = results.get(section)
    if data is None:
      continue
    records = list(data.get("records", [])) + list(data.get("pallas", {}).get("checks", []))
    for record in records:
      if "check" in record and not record["check"]["ok"]:
        what = [str(record.get(key)) for key in ("implementation", "activation", "direction")]
        what += [str(record.get(key)) for key in ("dtype", "size", "shape") if key in record]
        failed.append(f"{section}: {' '.join(w for w in what if w != 'None')}")
  return failed


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the benchmark; returns the exit status (2, with one line, on an expected failure)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  return cli.guarded(lambda: _run(argv), PROG)


def _run(argv: Sequence[str]) -> int:
  parser = make_parser()
  args = parser.parse_args(argv)
  out = args.out or REPO_ROOT / "runs" / datetime.datetime.now().strftime("bench-%Y%m%d-%H%M%S")
  cli.prepare_out(out, resume=False, resumable=False)  # before any work: nothing is lost later
  allocator = None if args.system_malloc else timing.keep_freed_memory()

  results: dict[str, Any] = {
    "environment": environment(argv, allocator),
    "mode": "quick" if args.quick else "full",
    "sections": list(args.sections),
  }
  sections = build_sections(args.quick, args.sections)
  cases = [case for section in sections.values() for case in section.cases()]
  errors = []
  start = time.perf_counter()
  with tqdm(cases, desc="benchmarks", unit="case", file=sys.stderr, dynamic_ncols=True) as bar:
    for case in bar:
      bar.set_postfix_str(case.name)
      try:
        case.run()
      except Exception as err:  # One broken case must not lose a long run's other results.
        errors.append({"case": case.name, "error": f"{type(err).__name__}: {err}"})
        tqdm.write(f"{case.name} failed:\n{traceback.format_exc()}", file=sys.stderr)
  for name, section in sections.items():
    results[name] = section.results()
  results["environment"]["load_average_end"] = list(os.getloadavg())
  results["wall_s"] = time.perf_counter() - start
  results["errors"] = errors
  results["failed_checks"] = _failures(results)
  results["headline"] = bench_report.headline(results)

  store.write_json(out / "results.json", json.loads(json.dumps(results, default=str)))
  written = plots.write_plots(results, out)
  bench_report.write_report(results, written, out)
  for line in bench_report.headline_lines(results["headline"]):
    print(line)
  problems = len(errors) + len(results["failed_checks"])
  print(f"wrote {out / 'results.json'}, {out / 'report.md'} and {len(written)} plots", end="")
  print(f"; {problems} failed case(s) or check(s)" if problems else "")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
