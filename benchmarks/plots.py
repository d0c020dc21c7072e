"""The PNG plots of a benchmark run, one per section."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.ticker
import numpy as np

from benchmarks.report import shape_text
from experiments.report import plt, save_figure  # pyplot on the files-only backend


def _plot_elementwise(data: Mapping[str, Any], path: Path) -> None:
  dtypes, directions = data["dtypes"], data["directions"]
  fig, axes = plt.subplots(
    len(dtypes), len(directions), figsize=(6 * len(directions), 4 * len(dtypes)), squeeze=False
  )
  for row, dtype in enumerate(dtypes):
    copies = sorted((c for c in data["copy"] if c["dtype"] == dtype), key=lambda c: c["size"])
    for col, direction in enumerate(directions):
      ax = axes[row, col]
      ax.plot(
        [c["size"] for c in copies],
        [c["gb_per_s"] for c in copies],
        "k--",
        label="copy (memory-bound limit)",
      )
      for name in data["implementations"]:
        points = sorted(
          (r["size"], r["gb_per_s"])
          for r in data["records"]
          if r["implementation"] == name and r["dtype"] == dtype and r["direction"] == direction
        )
        if points:
          ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
      ax.set(title=f"{dtype}, {direction}", xlabel="elements", ylabel="GB/s (read + written)")
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
      ax.grid(alpha=0.3, which="both")
  axes[0, 0].legend(fontsize=8)
  if not data["pallas"]["timed"]:
    fig.suptitle(f"Pallas: {data['pallas']['note']}", fontsize=9)
  save_figure(fig, path, dpi=100)


def _plot_fused(data: Mapping[str, Any], path: Path) -> None:
  directions = data["directions"]
  groups = [(tuple(shape), dtype) for shape in data["shapes"] for dtype in data["dtypes"]]
  names = data["implementations"]
  fig, axes = plt.subplots(1, len(directions), figsize=(7 * len(directions), 4), squeeze=False)
  width = 0.8 / len(names)
  for ax, direction in zip(axes[0], directions, strict=True):
    for i, name in enumerate(names):
      values = {
        (tuple(r["shape"]), r["dtype"]): r["pct_of_roofline"]
        for r in data["records"]
        if r["implementation"] == name and r["direction"] == direction
      }
      ax.bar(
        np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width,
        [values.get(group, 0) for group in groups],
        width,
        label=name,
      )
    ax.set_xticks(np.arange(len(groups)), [f"{shape_text(s)}\n{d}" for s, d in groups], fontsize=7)
    ax.set(title=f"dense + Mish, {direction}", ylabel="% of roofline")
    ax.grid(alpha=0.3, axis="y")
  axes[0, 0].legend(fontsize=7)
  save_figure(fig, path, dpi=100)


def _bars(ax: plt.Axes, labels: Sequence[str], values: Sequence[float | None], **kwargs) -> None:
  """Bars with their values written on top; a missing value gets a 'skipped' label instead."""
  positions = np.arange(len(labels))
  heights = [0 if v is None else v for v in values]
  bars = ax.bar(positions, heights, **kwargs)
  for bar, value in zip(bars, values, strict=True):
    text = "skipped" if value is None else f"{value:.2f}"
    ax.annotate(
      text,
      (bar.get_x() + bar.get_width() / 2, bar.get_height()),
      ha="center",
      va="bottom",
      fontsize=8,
    )
  ax.set_xticks(positions, labels, rotation=15, fontsize=8)
  ax.grid(alpha=0.3, axis="y")


def _plot_training(data: Mapping[str, Any], path: Path) -> None:
  fig, ax = plt.subplots(figsize=(7, 4))
  records = data["records"]
  _bars(ax, [r["activation"] for r in records], [r.get("ratio_vs_relu") for r in records])
  ax.axhline(1.0, color="k", linewidth=0.8)
  ax.axhline(1.1, color="r", linestyle="--", linewidth=0.8, label="1.10x (target for mish)")
  ax.set(title=f"CNN train step time / ReLU's (batch {data['batch_size']})", ylabel="ratio")
  ax.legend(fontsize=8)
  save_figure(fig, path, dpi=100)


def _plot_memory(data: Mapping[str, Any], path: Path) -> None:
  records = [r for r in data["records"] if "memory" in r]
  labels = [r["activation"] for r in records]
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
  _bars(left, labels, [r["temp_mib"] for r in records], color="tab:blue")
  left.set(title="compiled temp memory of the step", ylabel="MiB")
  _bars(right, labels, [r.get("time_vs_relu") for r in records], color="tab:orange")
  right.axhline(1.0, color="k", linewidth=0.8)
  right.set(title="step time / ReLU's", ylabel="ratio")
  fig.suptitle(f"{data['model']}, batch {data['batch_size']}", fontsize=10)
  save_figure(fig, path, dpi=100)


PLOTS = {
  "elementwise": ("elementwise_throughput.png", _plot_elementwise),
  "fused": ("fused_roofline.png", _plot_fused),
  "training": ("training_ratios.png", _plot_training),
  "memory": ("memory.png", _plot_memory),
}


def write_plots(results: Mapping[str, Any], out: Path) -> dict[str, str]:
  """Writes a PNG per section that ran; returns section -> file name."""
  written = {}
  for section, (name, plot) in PLOTS.items():
    if section in results:
      plot(results[section], out / name)
      written[section] = name
  return written
