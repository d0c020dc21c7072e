"""The GPU check's results: results.json, rewritten atomically after every case, and its report.

The sections run one after another, each in its own process, so there is one writer at a time;
each rewrite also redraws report.md, so that a section killed at its budget loses only the case
it was in. The run-environment record is the experiments' (`experiments.report.environment`),
plus what a GPU result also depends on.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from experiments import report, store

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS, REPORT, LOG, TESTS_LOG, FIGURE = (
  "results.json",
  "report.md",
  "gpu_check.log",
  "tests.log",
  "gpu_check.png",
)
# The environment's fields beyond the shared record's, each a line of the report.
GPU_FIELDS = ("mode", "chip", "compute_capability", "git_commit", "source_sha256")


def write_results(out: Path, results: dict[str, Any]) -> None:
  """Writes `results` to DIR/results.json atomically: a reader sees the old file or the new one."""
  store.write_bytes(out / RESULTS, json.dumps(results, indent=1, default=str).encode())


def update(out: Path, section: str | None = None, **fields: Any) -> dict[str, Any]:
  """Merges `fields` into results.json, or into one section's record, and redraws report.md."""
  results = json.loads((out / RESULTS).read_text())
  target = results if section is None else results["sections"].setdefault(section, {})
  target.update(fields)
  write_results(out, results)
  (out / REPORT).write_text(render_report(results))
  return results


def _uncommitted_changes(*paths: str) -> bool:
  """Whether git sees changes under `paths` of the checkout (False outside a git checkout)."""
  try:
    done = subprocess.run(
      ["git", "status", "--porcelain", "--", *paths],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=10,
    )
  except (OSError, subprocess.SubprocessError):
    return False
  return done.returncode == 0 and bool(done.stdout.strip())


def environment(command: str, mode: str, chip: str | None, commit: str | None) -> dict[str, Any]:
  """The shared run-environment record, plus the GPU check's fields (`GPU_FIELDS`).

  Args:
    command: the command line of the run.
    mode: how Pallas runs here: compiled and timed, or under GPU interpret mode.
    chip: the datasheet chip this device is, if any.
    commit: the commit to record where the checkout has no .git (`--commit`).

  Returns:
    A JSON-ready record; its "git_commit" notes uncommitted changes to the measured code.
  """
  record = report.environment(command)
  digest = hashlib.sha256()
  for path in sorted([*REPO_ROOT.glob("kernels/*.py"), *REPO_ROOT.glob("mish_jax/**/*.py")]):
    digest.update(path.read_bytes())
  git_commit = record["git_commit"]
  if git_commit and _uncommitted_changes("kernels", "mish_jax", "benchmarks"):
    git_commit += " (with uncommitted changes)"
  return record | {
    "mode": mode,
    "chip": chip,
    "compute_capability": getattr(jax.devices()[0], "compute_capability", None),
    "git_commit": git_commit or commit,
    "source_sha256": digest.hexdigest()[:16],  # of kernels/ and mish_jax/, with or without git
  }


def _cell(record: dict[str, Any] | None) -> str:
  """One implementation's figures in a case, or what became of it."""
  if record is None:
    return "-"
  for outcome in ("error", "refused"):
    if outcome in record:
      return f"{outcome}: {record[outcome][:160]}"
  check = record.get("check")
  failed = f" **check failed: {check['error']:.2g}**" if check and not check["ok"] else ""
  if record.get("ms") is None:
    return "checked, not timed" + failed
  parts = [f"{record['ms']:.3g} ms"]
  formats = {"gb_s": "{:.3g} GB/s", "tflop_s": "{:.3g} TFLOP/s", "pct_copy": "{:.0f}% of copy"}
  formats |= {"pct_roofline": "{:.0f}% of roofline", "speedup": "{:.2f}x"}
  parts += [fmt.format(record[key]) for key, fmt in formats.items() if record.get(key) is not None]
  return ", ".join(parts) + failed


def _groups(cases: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
  """Runs of consecutive cases with the same implementations (the sweep's configs differ)."""
  groups: list[list[dict[str, Any]]] = []
  for case in cases:
    impls = list(case.get("results", {}))
    if groups and (not impls or impls == list(groups[-1][0].get("results", {}))):
      groups[-1].append(case)
    else:
      groups.append([case])
  return groups


def _environment_lines(env: dict[str, Any] | None) -> list[str]:
  if not env:
    return ["- environment: pending"]
  return [f"- {report.describe_environment(env)}"] + [f"- {key}: {env[key]}" for key in GPU_FIELDS]


def render_report(results: dict[str, Any]) -> str:
  """The Markdown report of whatever results.json holds so far: one table per section."""
  lines = ["# GPU check", "", *_environment_lines(results.get("environment"))]
  lines += [f"- command: `{' '.join(results['command'])}`, budget {results['budget_s']} s"]
  for name, section in results["sections"].items():
    status = f"status: **{section.get('status', '?')}**"
    if section.get("elapsed_s") is not None:
      status += f", {section['elapsed_s']} s of its {section.get('budget_s')} s budget"
    lines += ["", f"## {name}", "", status]
    lines += [f"- {key}: {section[key]}" for key in ("note", "current") if section.get(key)]
    if "summary" in section:
      lines += ["", f"{section['summary']} (`pytest {' '.join(section['args'])}`, {TESTS_LOG})"]
    for cases in _groups(section.get("cases", [])):
      impls = list(cases[0].get("results", {})) or ["result"]
      lines += ["", f"Each cell: {cases[0].get('legend', 'what happened')}.", ""]
      if name == "sweep":  # A config per row: their labels are long.
        rows = [[i] + [_cell(case.get("results", {}).get(i)) for case in cases] for i in impls]
        lines.append(report.markdown_table(["config", *(case["title"] for case in cases)], rows))
        continue
      rows = [
        [case["title"], *([case["error"]] if "error" in case else [])]
        + [_cell(case["results"].get(i)) for i in impls if "results" in case]
        for case in cases
      ]
      lines.append(report.markdown_table(["case", *impls], rows))
  return "\n".join(lines) + "\n"


def draw_figure(results: dict[str, Any], path: Path) -> None:
  """Elementwise GB/s against size, and fused TFLOP/s per case."""
  sections = results["sections"]
  fig, (left, right) = report.plt.subplots(1, 2, figsize=(14, 5))
  series: dict[str, list[tuple[int, float]]] = {}
  for case in sections.get("elementwise", {}).get("cases", []):
    for impl, record in case.get("results", {}).items():
      if record.get("gb_s") is not None:
        key = f"{impl}, {case['dtype']}, {case['direction']}"
        series.setdefault(key, []).append((case["size"], record["gb_s"]))
  for key, points in series.items():
    left.plot(*zip(*sorted(points), strict=True), marker="o", label=key)
  left.set(xscale="log", xlabel="elements", ylabel="GB/s (bytes read + written)")
  if series:
    left.legend(fontsize=5)
  bars = [
    (f"{case['title']} | {impl}", record["tflop_s"])
    for case in sections.get("fused", {}).get("cases", [])
    for impl, record in case.get("results", {}).items()
    if record.get("tflop_s") is not None
  ]
  right.barh(range(len(bars)), [value for _, value in bars])
  right.set_yticks(range(len(bars)), [label for label, _ in bars], fontsize=4)
  right.set(xlabel="TFLOP/s")
  report.save_figure(fig, path, dpi=130)


def problems(section: dict[str, Any]) -> list[str]:
  """What keeps a section from passing: its status, errors, failed checks, skipped cases."""
  found = [] if section.get("status") == "done" else [f"status {section.get('status')}"]
  for case in section.get("cases", []):
    if "error" in case:
      found.append(f"{case['title']}: {case['error']}")
    for impl, record in case.get("results", {}).items():
      if "error" in record:
        found.append(f"{case['title']}, {impl}: {record['error']}")
      elif "check" in record and not record["check"]["ok"]:
        found.append(f"{case['title']}, {impl}: check failed ({record['check']['error']:.2g})")
  return found
