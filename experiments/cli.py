"""The command line shared by every command of the experiments and the benchmarks.

One error path: an expected failure (a bad flag, missing or corrupt data, an output folder that
cannot be used, a resume that does not match, a damaged checkpoint, a distributed set-up that
fails) raises `Fault`, and `guarded` turns it into one line on stderr and exit status 2. Only a
bug in the code gives a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn


class Fault(Exception):
  """An expected failure: the message names the file or flag at fault and the fix."""


def one_line(message: str) -> str:
  """`message` with its whitespace, newlines included, collapsed: a CLI prints one line."""
  return " ".join(message.split())


class ArgumentParser(argparse.ArgumentParser):
  """Reports a usage error as one line on stderr, then exits with status 2."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def guarded(main: Callable[[], int], prog: str) -> int:
  """Runs `main`; a `Fault` becomes one line on stderr, `prog: error: ...`, and status 2.

  Args:
    main: the command, returning its exit status.
    prog: the command's name, e.g. "python experiments/mnist.py".

  Returns:
    `main`'s status, or 2 after a `Fault`.
  """
  try:
    return main()
  except Fault as err:
    sys.stderr.write(f"{prog}: error: {one_line(str(err))}\n")
    return 2


def int_in(low: int, high: int | None) -> Callable[[str], int]:
  """An argparse type: an integer in [low, high] (no upper bound when `high` is None)."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
      bound = "a positive integer" if low == 1 else f"an integer of at least {low}"
      raise argparse.ArgumentTypeError(f"must be {bound}, not {value}")
    if high is not None and value > high:
      raise argparse.ArgumentTypeError(f"must be at most {high:,}, not {value}")
    return value

  return parse


positive_int = int_in(1, None)


def positive_float(text: str) -> float:
  """An argparse type: a finite number > 0."""
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
  if not value > 0 or not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
  return value


def names_from(choices: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
  """An argparse type: comma-separated names from `choices`, de-duplicated, in order.

  Args:
    choices: the valid names.
    what: the kind of name, for the error message (e.g. "activation").

  Returns:
    The parser of one flag's text.
  """

  def parse(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in choices]
    if unknown or not names:
      raise argparse.ArgumentTypeError(
        f"unknown {what} {', '.join(map(repr, unknown)) or '(none given)'}: "
        f"choose from {', '.join(choices)}"
      )
    return names

  return parse


def prepare_out(out: Path, *, resume: bool, resumable: bool = True) -> None:
  """Creates `out` and probes that it is writable, before any work starts.

  Args:
    out: the output folder.
    resume: the run continues the one in `out`.
    resumable: whether the command can resume at all (the advice of the error depends on it).

  Raises:
    Fault: `out` is a file, is not writable, or holds another run and `resume` is false.
  """
  if out.exists() and not out.is_dir():
    raise Fault(f"--out {out} is a file, not a folder")
  if not resume and out.exists() and any(out.iterdir()):
    advice = (
      "pass --resume to continue its run, or another --out" if resumable else "choose another"
    )
    raise Fault(f"--out {out} is not empty: {advice}")
  try:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".write-test"
    probe.write_text("")
    probe.unlink()
  except OSError as err:
    raise Fault(f"--out {out} is not writable: {err.strerror or err}") from None
