"""The report of a benchmark run: headline targets and Markdown tables (the plots: `plots`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.report import markdown_table

MIB = 2**20
HEADLINE_SIZE = 2**22  # "4M float32 elements", the size of the elementwise targets.
MISH = "mish_jax.mish (xla)"


# Formatting.


def _num(value: float | None, digits: int = 3) -> str:
  """`value` to `digits` significant digits, without scientific notation for ordinary sizes."""
  if value is None:
    return "-"
  if value == 0 or 1e-3 <= abs(value) < 1e6:
    decimals = max(digits - 1 - int(np.floor(np.log10(abs(value)))) if value else 0, 0)
    return f"{value:,.{decimals}f}"
  return f"{value:.{digits - 1}e}"


def _ratio(value: float | None) -> str:
  return "-" if value is None else f"{value:.2f}x"


def _size(size: int) -> str:
  exponent = size.bit_length() - 1
  return f"2^{exponent} ({size:,})" if size == 2**exponent else f"{size:,}"


def shape_text(shape: Sequence[int]) -> str:
  """(8, 16) -> '8x16'."""
  return "x".join(map(str, shape))


def _check(record: Mapping[str, Any]) -> str:
  check = record.get("check")
  if check is None:
    return "-"
  if "worst" not in check:
    return "ok" if check["ok"] else "FAILED"
  return f"{'ok' if check['ok'] else 'FAILED'} ({check['worst']:.2f} of tol.)"


# Headline.


def _elementwise_record(results: Mapping[str, Any], direction: str) -> dict[str, Any] | None:
  records = [
    r
    for r in results.get("elementwise", {}).get("records", [])
    if r["implementation"] == MISH and r["direction"] == direction and r["dtype"] == "float32"
  ]
  if not records:
    return None
  # The 4M-element case, or the largest of a --quick run.
  return min(records, key=lambda r: (r["size"] != HEADLINE_SIZE, -r["size"]))


def _by_activation(results: Mapping[str, Any], section: str) -> dict[str, dict[str, Any]]:
  return {r["activation"]: r for r in results.get(section, {}).get("records", [])}


def headline(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The targets of the issue, each with its measured value and whether it is met.

  Args:
    results: the run's results, with any subset of the sections.

  Returns:
    A list of {"metric", "where", "value", "target", "met"}; targets whose section did not run
    are left out.
  """
  rows = []

  def add(metric: str, where: str, value: float | None, bound: float, at_least: bool) -> None:
    if value is not None:
      met = value >= bound if at_least else value <= bound
      target = f"{'>=' if at_least else '<='} {bound:g}"
      rows.append({"metric": metric, "where": where, "value": value, "target": target, "met": met})

  for direction in ("forward", "forward+backward"):
    record = _elementwise_record(results, direction)
    if record is not None:
      where = f"float32, {record['size']:,} elements"
      add(
        f"mish_jax.mish {direction}: speed-up over jax.nn.mish",
        where,
        record["speedup_vs_jax_nn_mish"],
        4.0,
        True,
      )
      add(
        f"mish_jax.mish {direction}: time / jax.nn.silu's",
        where,
        record["time_vs_silu"],
        1.5,
        False,
      )
  training = _by_activation(results, "training")
  if "mish" in training:
    add(
      "CNN train step: mish_jax.mish / ReLU",
      f"batch {results['training']['batch_size']}",
      training["mish"].get("ratio_vs_relu"),
      1.10,
      False,
    )
  memory = _by_activation(results, "memory")
  if "mish" in memory:
    data = results["memory"]
    add(
      "MLP train step temp bytes: mish_jax.mish / ReLU",
      f"{data['layers']} x {data['width']}, batch {data['batch_size']}",
      memory["mish"].get("temp_vs_relu"),
      1.10,
      False,
    )
  return rows


def headline_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """One line per headline target, for the terminal."""
  return [
    f"{'met' if row['met'] else 'NOT MET'}: {row['metric']} = {row['value']:.2f} "
    f"(target {row['target']}; {row['where']})"
    for row in rows
  ]


# The Markdown report.


def _loads(loads: Sequence[float]) -> str:
  return ", ".join(f"{load:.1f}" for load in loads)


def _header(results: Mapping[str, Any]) -> list[str]:
  env = results["environment"]
  device = env["device"]
  versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
  return [
    "# mish-jax benchmarks",
    "",
    f"- Date: {env['date']}; mode: {results['mode']}; wall time {results['wall_s']:.0f} s",
    f"- Command: `{env['command']}`",
    f"- Device: {device['platform']} / {device['device_kind']} (x{device['count']}); "
    f"CPU: {env['cpu']} ({env['cpu_count']} cores)",
    f"- Versions: {versions}; git {env['git_commit']}",
    f"- Load average (1, 5, 15 min) at start {_loads(env['load_average_start'])}, at end "
    f"{_loads(env['load_average_end'])} on {env['cpu_count']} cores: other processes share "
    "them, so absolute times wander; every ratio comes from interleaved rounds.",
    f"- Allocator: {env['allocator']}",
    "",
  ]


def _headline_section(results: Mapping[str, Any]) -> list[str]:
  rows = [
    (
      row["metric"],
      row["where"],
      f"{row['value']:.2f}",
      row["target"],
      "yes" if row["met"] else "**no**",
    )
    for row in results["headline"]
  ]
  return [
    "## Headline",
    "",
    markdown_table(("metric", "where", "value", "target", "met"), rows),
    "",
  ]


def _elementwise_section(data: Mapping[str, Any], plot: str | None) -> list[str]:
  lines = [
    "## 1. Elementwise",
    "",
    f"Bytes: {data['bytes_model']}. Copy: {data['copy_model']}. Speed-up = jax.nn.mish's time / "
    "this one's; time / silu's = this one's time / jax.nn.silu's (both medians of per-round "
    "ratios). Check: the largest error over its tolerance, on evenly spaced elements, against "
    "float64 numpy.",
    "",
    f'Pallas (`mish_jax.mish(x, implementation="pallas")`): {data["pallas"]["note"]}.',
    "",
  ]
  copies = {(c["dtype"], c["size"]): c for c in data["copy"]}
  headers = (
    "size",
    "implementation",
    "ms",
    "GB/s",
    "% of copy",
    "speed-up over jax.nn.mish",
    "time / silu's",
    "compile s",
    "check",
  )
  for dtype in data["dtypes"]:
    for direction in data["directions"]:
      rows = []
      for size in data["sizes"]:
        copy = copies.get((dtype, size))
        if copy is not None:
          rows.append(
            (
              _size(size),
              f"copy ({copy['best']})",
              _num(copy["seconds"] * 1e3),
              _num(copy["gb_per_s"]),
              "100",
              "",
              "",
              "",
              "",
            )
          )
        for r in data["records"]:
          if (r["dtype"], r["direction"], r["size"]) == (dtype, direction, size):
            rows.append(
              (
                _size(size),
                r["implementation"],
                _num(r["ms"]),
                _num(r["gb_per_s"]),
                _num(r["pct_of_copy"], 2),
                _ratio(r["speedup_vs_jax_nn_mish"]),
                _ratio(r["time_vs_silu"]),
                _num(r["compile_s"], 2),
                _check(r),
              )
            )
      lines += [f"### {dtype}, {direction}", "", markdown_table(headers, rows), ""]
  if plot:
    lines += [f"![elementwise throughput]({plot})", ""]
  return lines


def _pallas_checks(data: Mapping[str, Any]) -> list[str]:
  checks = data["pallas"]["checks"]
  if not checks:
    return []
  rows = [
    (
      r["implementation"],
      r["dtype"],
      r["direction"],
      _size(r["size"]) if "size" in r else shape_text(r["shape"]),
      _check(r),
    )
    for r in checks
  ]
  headers = ("implementation", "dtype", "direction", "size or shape", "check")
  return [markdown_table(headers, rows), ""]


def _fused_order(data: Mapping[str, Any], record: Mapping[str, Any]) -> tuple[int, ...]:
  """Rows by shape, dtype, direction, then implementation, in the section's own orders."""
  return (
    data["shapes"].index(record["shape"]),
    data["dtypes"].index(record["dtype"]),
    data["directions"].index(record["direction"]),
    data["implementations"].index(record["implementation"]),
  )


def _fused_section(data: Mapping[str, Any], plot: str | None) -> list[str]:
  lines = ["## 2. Fused dense: mish(x @ w + b)", "", f"Model: {data['model']}.", ""]
  lines += [f"Note: {note}." for note in data["notes"]] + ([""] if data["notes"] else [])
  lines += [
    f'Pallas (`mish_jax.linear_mish(..., implementation="pallas")`): {data["pallas"]["note"]}.',
    "",
  ]
  lines += _pallas_checks(data)
  baselines = [
    (
      shape_text(b["shape"]),
      b["dtype"],
      _num(b["peak_tflops"], 3),
      _num(b["bandwidth_gb_per_s"], 3),
    )
    for b in data["baselines"]
  ]
  peaks = " and ".join(f"{n}^3" for n in data["peak_matmul_sizes"])
  lines += [
    f"Baselines, timed in each case's rounds: the peak rate is the faster of {peaks} matmuls of "
    f"the case's dtype, the bandwidth a copy of {data['bandwidth_copy_size']:,} float32. Above "
    "100% of the roofline, a case ran faster than those baselines did.",
    "",
    markdown_table(("case", "dtype", "peak TFLOP/s", "bandwidth GB/s"), baselines),
    "",
  ]
  rows = [
    (
      shape_text(r["shape"]),
      r["dtype"],
      r["direction"],
      r["implementation"],
      _num(r["ms"]),
      _num(r["tflops"], 3),
      _num(r["pct_of_roofline"], 2),
      _ratio(r["speedup_vs_jax_nn_mish"]),
      _num(r["compile_s"], 2),
      _check(r),
    )
    for r in sorted(data["records"], key=lambda r: _fused_order(data, r))
  ]
  headers = (
    "M x K x N",
    "dtype",
    "direction",
    "implementation",
    "ms",
    "TFLOP/s",
    "% of roofline",
    "speed-up over jax.nn.mish",
    "compile s",
    "check",
  )
  lines += [markdown_table(headers, rows), ""]
  if plot:
    lines += [f"![fused roofline]({plot})", ""]
  return lines


def _training_section(data: Mapping[str, Any], plot: str | None) -> list[str]:
  rows = []
  for r in data["records"]:
    if "skipped" in r:
      rows.append((r["activation"], "-", "-", "-", "-", "-", f"skipped: {r['skipped']}"))
    else:
      rows.append(
        (
          r["activation"],
          _num(r.get("ms")),
          _ratio(r.get("ratio_vs_relu")),
          _num(r["compile_s"], 2),
          f"{r['parameters']:,}",
          _num(r["first_loss"], 4),
          _check(r),
        )
      )
  options = data["model_options"] or "the MNIST CNN's defaults"
  lines = [
    "## 3. Training cost: the MNIST CNN's train step",
    "",
    f"Model: {data['model']} with {options}; step: {data['step']}; batch {data['batch_size']} of "
    f"random {shape_text(data['input_shape'])} images. Ratio: {data['ratio']}.",
    "",
    markdown_table(
      ("activation", "step ms", "vs ReLU", "compile s", "parameters", "first loss", "check"), rows
    ),
    "",
  ]
  if plot:
    lines += [f"![training step ratios]({plot})", ""]
  return lines


def _memory_section(data: Mapping[str, Any], plot: str | None) -> list[str]:
  rows = []
  for r in data["records"]:
    if "memory" not in r:
      rows.append((r["activation"], *["-"] * 6, f"skipped: {r.get('skipped')}"))
      continue
    stats = r["memory"]
    rows.append(
      (
        r["activation"],
        _num(r["temp_mib"], 4),
        _ratio(r.get("temp_vs_relu")),
        _num(stats.get("argument_size_in_bytes", 0) / MIB, 4),
        _num(stats.get("output_size_in_bytes", 0) / MIB, 4),
        _num(r.get("ms")),
        _ratio(r.get("time_vs_relu")),
        _check(r),
      )
    )
  lines = [
    "## 4. Memory: a deep MLP's train step",
    "",
    f"{data['model']}; batch {data['batch_size']}; {data['step']}. Temp: "
    "`jax.jit(step).lower(...).compile().memory_analysis().temp_size_in_bytes`, the buffers the "
    f"step needs beyond its arguments and outputs; one layer's activations are "
    f"{_num(data['activation_mib_per_layer'])} MiB.",
    "",
    markdown_table(
      (
        "activation",
        "temp MiB",
        "temp vs ReLU",
        "arguments MiB",
        "outputs MiB",
        "step ms",
        "time vs ReLU",
        "check",
      ),
      rows,
    ),
    "",
  ]
  if plot:
    lines += [f"![memory]({plot})", ""]
  return lines


def _correctness_section(results: Mapping[str, Any]) -> list[str]:
  lines = ["## Correctness and errors", ""]
  failed, errors = results["failed_checks"], results["errors"]
  if not failed:
    lines.append("Every result matched its float64 reference within tolerance.")
  else:
    lines += ["Failed checks:", ""] + [f"- {what}" for what in failed]
  if "elementwise" in results:
    lines += ["", "Elementwise Pallas checks:", ""] + _pallas_checks(results["elementwise"])
  lines += [""]
  if errors:
    lines += ["Cases that raised:", ""] + [f"- {e['case']}: `{e['error']}`" for e in errors] + [""]
  return lines


SECTION_WRITERS = {
  "elementwise": _elementwise_section,
  "fused": _fused_section,
  "training": _training_section,
  "memory": _memory_section,
}


def write_report(results: Mapping[str, Any], plots: Mapping[str, str], out: Path) -> None:
  """Writes `out/report.md`: header, headline targets, a section per section run, checks."""
  lines = _header(results) + _headline_section(results)
  for section, writer in SECTION_WRITERS.items():
    if section in results:
      lines += writer(results[section], plots.get(section))
  lines += _correctness_section(results)
  (out / "report.md").write_text("\n".join(lines))
