"""Command-line pieces shared by the experiments and the benchmarks: one-line usage errors."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn


class ArgumentParser(argparse.ArgumentParser):
  """Reports a usage error as one line on stderr, then exits with status 2."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def positive_int(text: str) -> int:
  """An argparse type: an integer >= 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, not {value}")
  return value


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


def prepare_out(parser: argparse.ArgumentParser, out: Path, resume: bool) -> None:
  """Creates `out`, checks that it is writable and refuses to mix a new run into an old one.

  Every problem is a usage error of `parser` (one line, exit status 2).
  """
  if out.exists() and not out.is_dir():
    parser.error(f"--out {out} is a file, not a folder")
  if not resume and out.exists() and any(out.iterdir()):
    parser.error(f"--out {out} is not empty: pass --resume to continue its run, or another --out")
  try:
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".write-test"
    probe.write_text("")
    probe.unlink()
  except OSError as err:
    parser.error(f"--out {out} is not writable: {err.strerror or err}")
