"""The GPU check: what a lent Hopper GPU must show, in one command that fits one device call.

    python benchmarks/gpu_check.py --out DIR [--quick] [--sections tests,elementwise,fused,sweep]
    python benchmarks/gpu_check.py --roofline   # the paper roofline of every benchmark case

Sections, each in its own process killed at its share of `--budget`, so that a kernel that hangs
or crashes costs only its own section; each finished case goes into DIR/results.json and
DIR/report.md at once, so neither a crash nor the device tool's time limit loses it:

1. tests: the compiled kernel tests (`pytest -k Compiled` of the two kernel test files), their
   output in DIR/tests.log.
2. elementwise: `mish_jax.mish` (Pallas and XLA) and `jax.nn.mish`, forward and forward+backward,
   float32 and bfloat16, 2^20 to 2^28 elements, beside a device-to-device copy of the same size.
3. fused: `mish_jax.linear_mish` (Pallas and XLA), `jax.nn.mish(x @ w + b)` and the plain
   `x @ w + b`, forward and forward+backward, on the benchmark shapes.
4. sweep: both kernels over their tuning configs (each integer field of the default halved and
   doubled; the configs the kernel refuses are listed as refused), against the default.

Every case is compiled, checked against a reference on its very inputs, warmed up and timed in
interleaved rounds with its baseline in the same process (`benchmarks.gpu_sections`, on
`benchmarks.timing`). The roofline (bytes, FLOPs, the bound and the minimum time on an H100 and
an H200) comes from `benchmarks.roofline`, the code that also prints the tables of
docs/benchmarks.md (`--roofline`); `benchmarks.gpu_results` writes the files. This module is the
command line and the runner of the sections' processes.

Where Pallas does not compile (a CPU, a non-Hopper GPU) the same sections run on tiny shapes with
the kernels under Mosaic GPU interpret mode: checked, not timed. Exit status: 0 when every
section finished and every check passed, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

if not __package__:  # Run as a script: import `benchmarks` (and `experiments`) from the checkout.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import gpu_results, gpu_sections
from benchmarks.gpu_results import FIGURE, LOG, REPORT, RESULTS, TESTS_LOG
from benchmarks.roofline import roofline_markdown
from experiments import cli

PROG = "gpu_check.py"
REPO_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("tests", "elementwise", "fused", "sweep")
# Each section's share of the budget: the compiled tests compile the most kernels.
SECTION_SHARES = {"tests": 0.32, "elementwise": 0.24, "fused": 0.26, "sweep": 0.18}
# 7 minutes: a device call may run 10, and the machine's start takes one or two of the 15.
DEFAULT_BUDGET_S = 420.0
KERNEL_TESTS = ("tests/test_mish_kernel.py", "tests/test_linear_mish_kernel.py")


def _installed_kernels() -> Path | None:
  """The folder `mish_jax.kernels` imports from, or None where it is not installed."""
  spec = importlib.util.find_spec("mish_jax.kernels")
  return Path(spec.origin).resolve().parent if spec and spec.origin else None


def ensure_installed() -> None:
  """Installs this checkout, `pip install --no-deps -e .`, where `mish_jax.kernels` is not it.

  The GPU image has JAX, Flax and Optax but not this package, and nothing can be downloaded
  there: no dependencies and no build isolation (its own setuptools builds). The sections' and
  the tests' processes, started afterwards, import the checkout as pyproject.toml maps it.

  Raises:
    cli.Fault: when pip fails; the message holds the end of its output.
  """
  if _installed_kernels() == REPO_ROOT / "kernels":
    return
  command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
  command += ["-e", str(REPO_ROOT)]
  print(f"[gpu_check] installing the checkout: {shlex.join(command)}", flush=True)
  done = subprocess.run(command, capture_output=True, text=True)
  if done.returncode:
    output = cli.one_line(done.stdout + done.stderr)[-600:]
    raise cli.Fault(f"could not install the checkout ({shlex.join(command)}): {output}")


def _wait(process: subprocess.Popen, timeout_s: float) -> int | None:
  """The exit status, or None after killing the process and its children at the timeout.

  The process leads its own session (`start_new_session`), so its whole group goes: pytest and
  its workers, a section and anything it started. So it does if this process is interrupted.
  """
  try:
    return process.wait(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return None
  except BaseException:
    os.killpg(process.pid, signal.SIGKILL)
    raise


def run_tests(out: Path, timeout_s: float) -> dict[str, Any]:
  """Runs the compiled kernel tests in a pytest process, its output in DIR/tests.log."""
  # "-k" matches test names too (test_..._compiled_...), hence the exclusions.
  select = "Compiled and not Interpret and not Lowering"
  args = ["-q", "-rfEs", "-p", "no:cacheprovider", "-k", select, *KERNEL_TESTS]
  command = [sys.executable, "-m", "pytest", *args]
  with open(out / TESTS_LOG, "w") as log:
    process = subprocess.Popen(
      command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
    )
    status = _wait(process, timeout_s)
  lines = (out / TESTS_LOG).read_text(errors="replace").splitlines()
  summary = next(
    (line.strip("= ") for line in reversed(lines) if re.search(r" in [\d.]+s", line)), ""
  )
  record = {"args": args, "summary": summary or f"no summary: see {TESTS_LOG}"}
  record["counts"] = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}
  if status is None:
    return record | {"status": "timeout", "note": f"pytest killed after {timeout_s:.0f} s"}
  return record | {"status": "done" if status == 0 else "failed"}


def run_cases(out: Path, section: str, cases: Iterator[gpu_sections.Case], deadline: float) -> None:
  """Runs a section's cases until `deadline` (monotonic), recording each as it finishes."""
  records = []
  for title, run in cases:
    if time.monotonic() > deadline:
      records.append({"title": title, "error": "skipped: the section's budget ran out"})
      continue
    gpu_results.update(out, section, current=title, cases=records)
    print(f"[gpu_check] {section}: {title}", flush=True)
    start = time.monotonic()
    try:
      record = run()
    except Exception as err:  # A case's failure is recorded, and the next case runs.
      traceback.print_exc()
      record = {"title": title, "error": gpu_sections.error_summary(err)}
      gpu_sections.reset_interpreter()
    records.append(record | {"elapsed_s": round(time.monotonic() - start, 2)})
  gpu_results.update(out, section, current=None, cases=records, status="done")


def run_section(args: argparse.Namespace) -> int:
  """The body of one section's process (`--section NAME`)."""
  deadline = time.monotonic() + args.deadline
  if args.section == "tests":  # Before this process's JAX takes the GPU's memory.
    record = run_tests(args.out, args.deadline)
  ctx = gpu_sections.Context.create(args.quick)
  results = json.loads((args.out / RESULTS).read_text())
  if results["environment"] is None:
    chip = ctx.chip.name if ctx.chip else None
    env = gpu_results.environment(shlex.join(results["command"]), ctx.mode, chip, args.commit)
    gpu_results.update(args.out, environment=env)
  if args.section != "tests":
    run_cases(args.out, args.section, gpu_sections.SECTION_CASES[args.section](ctx), deadline)
    return 0
  if ctx.compiled and not record["counts"].get("passed"):
    record |= {"status": "failed", "note": "no compiled test ran on this Hopper GPU"}
  elif not ctx.compiled:
    record["note"] = "the compiled tests skip where Pallas does not compile"
  gpu_results.update(args.out, args.section, **record)
  return 0


def run(args: argparse.Namespace) -> int:
  """Runs the sections one by one, each in a process killed at its budget; the exit status."""
  out: Path = args.out
  cli.prepare_out(out, resume=False, resumable=False)  # Before any work.
  ensure_installed()
  command = [Path(sys.argv[0]).name, *sys.argv[1:]]
  header = {"command": command, "budget_s": args.budget, "environment": None, "sections": {}}
  gpu_results.write_results(out, header)
  total_share = sum(SECTION_SHARES[name] for name in args.sections)
  all_problems = []
  for index, name in enumerate(args.sections, 1):
    budget = args.budget * SECTION_SHARES[name] / total_share
    progress = f"[gpu_check] {index}/{len(args.sections)} {name}"
    print(f"{progress}: started, budget {budget:.0f} s", flush=True)
    gpu_results.update(out, name, status="running", budget_s=round(budget))
    # The child stops starting cases a little before the budget, at which it is killed.
    child = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--section", name]
    child += ["--deadline", f"{budget - min(30.0, 0.2 * budget):.1f}"]
    child += (["--quick"] if args.quick else []) + (
      ["--commit", args.commit] if args.commit else []
    )
    start = time.monotonic()
    with open(out / LOG, "a") as log:
      log.write(f"==== {name}\n")
      log.flush()
      process = subprocess.Popen(
        child, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
      )
      status = _wait(process, budget)
    section = json.loads((out / RESULTS).read_text())["sections"][name]
    if status is None:
      note = f"killed at its budget of {budget:.0f} s, in case: {section.get('current')}"
      section = gpu_results.update(out, name, status="timeout", note=note)["sections"][name]
    elif section.get("status") == "running":
      note = f"its process exited with status {status} in case {section.get('current')} ({LOG})"
      section = gpu_results.update(out, name, status="crashed", note=note)["sections"][name]
    elapsed = round(time.monotonic() - start, 1)
    gpu_results.update(out, name, elapsed_s=elapsed)
    found = gpu_results.problems(section)
    all_problems += found
    what = f"{len(section['cases'])} cases" if "cases" in section else section.get("summary", "")
    listed = f"; {len(found)} problems: {'; '.join(found)}"[:600] if found else ""
    print(f"{progress}: {section['status']} in {elapsed:.0f} s, {what}{listed}", flush=True)
  gpu_results.draw_figure(json.loads((out / RESULTS).read_text()), out / FIGURE)
  files = [RESULTS, REPORT, LOG] + ([TESTS_LOG] if "tests" in args.sections else []) + [FIGURE]
  verdict = f"{len(all_problems)} problems" if all_problems else "every section passed"
  print(f"[gpu_check] {verdict}; wrote {', '.join(files)} in {out}", flush=True)
  return 1 if all_problems else 0


def _budget(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
  if not 10 <= value <= 3600:
    raise argparse.ArgumentTypeError(f"must be between 10 and 3600 seconds, not {text}")
  return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The flags; a usage error exits with status 2 and one line on stderr (`cli.ArgumentParser`)."""
  summary, details = __doc__.split("\n\n", 1)
  parser = cli.ArgumentParser(
    prog=PROG,
    description=summary,
    epilog=details,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  files = f"{RESULTS}, {REPORT}, {LOG}, {TESTS_LOG} and {FIGURE}"
  parser.add_argument("--out", type=Path, metavar="DIR", help=f"a new or empty folder: {files}")
  parser.add_argument(
    "--quick",
    action="store_true",
    help="on a Hopper GPU: 2 sizes and 2 dense "
    "shapes; elsewhere the tiny interpret-mode shapes are used anyway",
  )
  parser.add_argument(
    "--sections",
    type=cli.names_from(SECTIONS, "section"),
    default=SECTIONS,
    help=f"comma-separated, from {','.join(SECTIONS)} (default: all)",
  )
  parser.add_argument(
    "--budget",
    type=_budget,
    default=DEFAULT_BUDGET_S,
    metavar="SECONDS",
    help="the whole run's time, shared by the sections in fixed shares; a "
    f"section past its share is killed (default {DEFAULT_BUDGET_S:.0f})",
  )
  parser.add_argument("--commit", help="the commit to record where the checkout has no .git")
  parser.add_argument(
    "--roofline",
    action="store_true",
    help="print the roofline tables of docs/benchmarks.md and exit",
  )
  parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # A child's.
  parser.add_argument("--deadline", type=float, default=60.0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.roofline or args.section:
    return args
  if args.out is None:
    parser.error("--out DIR is required (or --roofline)")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command; returns the exit status (2, with one line, on a usage error)."""
  args = parse_args(argv)
  if args.roofline:
    print(roofline_markdown(), end="")
    return 0
  if args.section:
    return run_section(args)
  return cli.guarded(lambda: run(args), PROG)  # An --out that cannot be used: status 2.


if __name__ == "__main__":
  # A terminated run (the device tool's time limit) ends its section's processes with it.
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
  sys.exit(main())
