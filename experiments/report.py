"""What every report of the experiments and the benchmarks shares: tables, figures, environment.

* `markdown_table`: a GitHub Markdown table.
* `save_figure`: lays out, writes and closes a matplotlib figure (the Agg backend: files only).
* `environment`: what a result depends on (device, versions, git commit, date, command, load),
  the "environment" or "metadata" record of every results.json; `describe_environment` writes
  it as one line of a report.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import matplotlib

import mish_jax

matplotlib.use("Agg")  # files only: no display on these machines
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

REPO_ROOT = Path(__file__).resolve().parents[1]


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
  """A GitHub Markdown table; cells are written with `str`."""
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return "\n".join(lines)


def save_figure(fig: plt.Figure, path: str | os.PathLike[str], dpi: int = 120) -> None:
  """Lays out `fig`, writes it to `path` and closes it."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def _version(distribution: str) -> str | None:
  try:
    return metadata.version(distribution)
  except metadata.PackageNotFoundError:
    return None


def _cpu_model() -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or None


def git_commit() -> str | None:
  """The checkout's HEAD commit, or None outside a git checkout."""
  try:
    result = subprocess.run(
      ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return result.stdout.strip() or None


def environment(command: str, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """What a result depends on: device, CPU, library versions, git commit, date, command, load.

  Args:
    command: the command line, as a user would type it again.
    config: the settings of the run, stored under "config" (omitted when None).

  Returns:
    A JSON-ready record.
  """
  device = jax.devices()[0]
  record: dict[str, Any] = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "command": command,
  }
  if config is not None:
    record["config"] = dict(config)
  return {
    **record,
    "device": {
      "platform": device.platform,
      "device_kind": device.device_kind,
      "count": jax.device_count(),
    },
    "process_count": jax.process_count(),
    "cpu": _cpu_model(),
    "cpu_count": os.cpu_count(),
    "load_average_start": list(os.getloadavg()),
    "python": platform.python_version(),
    "platform": platform.platform(),
    "versions": {
      "jax": jax.__version__,
      "jaxlib": _version("jaxlib"),
      "flax": _version("flax"),
      "optax": _version("optax"),
      "orbax-checkpoint": _version("orbax-checkpoint"),
      "numpy": _version("numpy"),
      "mish-jax": mish_jax.__version__,
    },
    "git_commit": git_commit(),
    "executable": sys.executable,
  }


def describe_environment(env: Mapping[str, Any]) -> str:
  """One line for a report: date, device, cores, the main versions and the git commit."""
  versions, device, commit = env["versions"], env["device"], env.get("git_commit")
  return (
    f"{env['date']} on {device['platform']}: {device['device_kind']} (x{device['count']}, "
    f"{env['cpu_count']} CPU cores), "
    f"jax {versions['jax']}, flax {versions['flax']}, optax {versions['optax']}"
    + (f", git {commit[:12]}" if commit else "")
    + "."
  )
