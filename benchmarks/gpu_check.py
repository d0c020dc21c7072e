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
interleaved rounds with its baseline in the same process (`benchmarks.timing`). The roofline
(bytes, FLOPs, the bound and the minimum time on an H100 and an H200) comes from `case_roofline`,
the code that also prints the tables of docs/benchmarks.md (`--roofline`).

Where Pallas does not compile (a CPU, a non-Hopper GPU) the same sections run on tiny shapes with
the kernels under Mosaic GPU interpret mode: checked, not timed. Exit status: 0 when every
section finished and every check passed, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import hashlib
import importlib.util
import inspect
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("tests", "elementwise", "fused", "sweep")
# Each section's share of the budget: the compiled tests compile the most kernels.
SECTION_SHARES = {"tests": 0.32, "elementwise": 0.24, "fused": 0.26, "sweep": 0.18}
# 7 minutes: a device call may run 10, and the machine's start takes one or two of the 15.
DEFAULT_BUDGET_S = 420.0
KERNEL_TESTS = ("tests/test_mish_kernel.py", "tests/test_linear_mish_kernel.py")
RESULTS, REPORT, LOG, TESTS_LOG, FIGURE = (
  "results.json",
  "report.md",
  "gpu_check.log",
  "tests.log",
  "gpu_check.png",
)


def ensure_importable() -> None:
  """Makes `mish_jax`, `mish_jax.kernels` and `benchmarks` importable from this checkout.

  The GPU image has no `pip install -e .` of this repository: `kernels/` is then registered as
  `mish_jax.kernels`, as pyproject.toml's package-dir maps it.
  """
  if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
  import mish_jax

  if importlib.util.find_spec("mish_jax.kernels") is None:
    kernels = REPO_ROOT / "kernels"
    spec = importlib.util.spec_from_file_location(
      "mish_jax.kernels", kernels / "__init__.py", submodule_search_locations=[str(kernels)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["mish_jax.kernels"] = module
    spec.loader.exec_module(module)
    mish_jax.kernels = module


# 1. The roofline: one source for docs/benchmarks.md and for the run's "% of roofline".


@dataclasses.dataclass(frozen=True)
class Chip:
  """A GPU's datasheet limits, dense (no sparsity).

  Attributes:
    name: what its JAX device kind contains, e.g. "H100".
    bandwidth: device memory bytes per second.
    matmul_flops: matmul FLOP/s by operand dtype (float32 through tf32 `wgmma`).
    vector_flops: float32 FLOP/s of the CUDA cores, for elementwise math.
  """

  name: str
  bandwidth: float
  matmul_flops: dict[str, float]
  vector_flops: float


_HOPPER_MATMUL = {"bfloat16": 990e12, "float16": 990e12, "float32": 495e12}
CHIPS = (Chip("H100", 3.35e12, _HOPPER_MATMUL, 67e12), Chip("H200", 4.8e12, _HOPPER_MATMUL, 67e12))
DIRECTIONS = ("forward", "forward+backward")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# float32 operations per element of mish_f32, and of it with mish_grad_f32 (exp, division: one).
ELEMENTWISE_OPS = {"forward": 12, "forward+backward": 32}


def elementwise_cost(size: int, dtype: str, direction: str) -> tuple[int, int]:
  """(bytes, FLOPs) of Mish on `size` elements: each input read once, each output written once.

  Forward: x read, y written. Forward+backward: x and the cotangent g read, y and dx written.
  """
  streams = 2 if direction == "forward" else 4
  return streams * size * DTYPE_BYTES[dtype], ELEMENTWISE_OPS[direction] * size


def dense_cost(m: int, k: int, n: int, dtype: str, direction: str) -> tuple[int, int]:
  """(bytes, FLOPs) of mish(x @ w + b) for x: (M, K), w: (K, N): the compulsory traffic.

  Forward: x, w, b read, y written; 2MNK FLOPs. Forward+backward: x, w, b, g read, y, dx, dw, db
  written; 6MNK FLOPs (the matmuls only).
  """
  elements = m * k + k * n + n + m * n
  if direction == "forward":
    return elements * DTYPE_BYTES[dtype], 2 * m * n * k
  return 2 * elements * DTYPE_BYTES[dtype], 6 * m * n * k


def case_roofline(kind: str, shape: Sequence[int], dtype: str, direction: str) -> dict[str, Any]:
  """Bytes, FLOPs and, per chip, the bound ("memory" or "compute") and the minimum seconds."""
  if kind == "elementwise":
    num_bytes, flops = elementwise_cost(shape[0], dtype, direction)
  else:
    num_bytes, flops = dense_cost(*shape, dtype, direction)
  chips = {}
  for chip in CHIPS:
    rate = chip.vector_flops if kind == "elementwise" else chip.matmul_flops[dtype]
    memory_s, compute_s = num_bytes / chip.bandwidth, flops / rate
    bound = "memory" if memory_s >= compute_s else "compute"
    chips[chip.name] = {"bound": bound, "min_s": max(memory_s, compute_s)}
  return {"bytes": num_bytes, "flops": flops, "chips": chips}


@dataclasses.dataclass(frozen=True)
class Plan:
  """The cases of one run: elementwise sizes, dense (M, K, N) shapes, the sweep's shapes."""

  sizes: tuple[int, ...]
  dtypes: tuple[str, ...]
  shapes: tuple[tuple[tuple[int, int, int], str], ...]
  sweep_size: int
  sweep_dtypes: tuple[str, ...]
  sweep_shapes: tuple[tuple[int, int, int], ...]
  max_sweep_configs: int


FULL = Plan(
  sizes=(2**20, 2**22, 2**24, 2**26, 2**28),
  dtypes=("float32", "bfloat16"),
  shapes=(
    ((65536, 256, 1024), "bfloat16"),
    ((4096, 4096, 4096), "bfloat16"),
    ((16384, 1024, 4096), "bfloat16"),
    ((8192, 8192, 8192), "bfloat16"),
    ((4000, 1000, 300), "bfloat16"),
    ((65536, 256, 1024), "float32"),
    ((4096, 4096, 4096), "float32"),
  ),
  sweep_size=2**26,
  sweep_dtypes=("float32", "bfloat16"),
  sweep_shapes=((65536, 256, 1024), (4096, 4096, 4096)),
  max_sweep_configs=10,
)
QUICK = dataclasses.replace(
  FULL, sizes=(2**20, 2**24), shapes=FULL.shapes[:2], sweep_size=2**24, max_sweep_configs=4
)
# The GPU interpreter runs every simulated thread in Python: tiny shapes, ragged ones among them.
INTERPRET = Plan(
  sizes=(4096 + 128 + 5,),  # A full block, a partial one and a ragged tail.
  dtypes=("float32", "bfloat16"),
  shapes=(((33, 40, 50), "bfloat16"),),
  sweep_size=4096,
  sweep_dtypes=("bfloat16",),
  sweep_shapes=((64, 64, 128),),
  max_sweep_configs=2,
)


def _size_text(size: int) -> str:
  return f"2^{size.bit_length() - 1}" if size & (size - 1) == 0 else f"{size:,}"


def _seconds_text(seconds: float) -> str:
  return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def roofline_markdown(plan: Plan = FULL) -> str:
  """The roofline of every case of `plan` as Markdown tables, those of docs/benchmarks.md."""
  names = [chip.name for chip in CHIPS]
  lines = []
  for kind, cases in (
    ("elementwise", [((size,), dtype) for size in plan.sizes for dtype in plan.dtypes]),
    ("dense", list(plan.shapes)),
  ):
    title = "size" if kind == "elementwise" else "M x K x N"
    heads = [title, "dtype", "direction", "bytes", "FLOPs"] + [
      f"{n}: bound, min time" for n in names
    ]
    rows = []
    for shape, dtype in cases:
      label = _size_text(shape[0]) if kind == "elementwise" else " x ".join(map(str, shape))
      for direction in DIRECTIONS:
        r = case_roofline(kind, shape, dtype, direction)
        rows.append(
          [label, dtype, direction, f"{r['bytes'] / 1e6:,.1f} MB", f"{r['flops'] / 1e9:,.2f} G"]
          + [f"{r['chips'][n]['bound']}, {_seconds_text(r['chips'][n]['min_s'])}" for n in names]
        )
    lines += [*_table(heads, rows), ""]
  return "\n".join(lines)


# 2. Results: one JSON file, rewritten atomically after every case, and the report drawn from it.


def write_json(path: Path, data: Any) -> None:
  """Writes `data` to `path` atomically: a reader sees the old file or the new one, whole."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(data, indent=1, default=str))
  tmp.replace(path)


def update(out: Path, section: str | None = None, **fields: Any) -> dict[str, Any]:
  """Merges `fields` into results.json, or into one section's record, and redraws report.md.

  The sections run one after another, so there is one writer at a time.
  """
  results = json.loads((out / RESULTS).read_text())
  target = results if section is None else results["sections"].setdefault(section, {})
  target.update(fields)
  write_json(out / RESULTS, results)
  (out / REPORT).write_text(render_report(results))
  return results


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
  lines = ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
  return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


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


def render_report(results: dict[str, Any]) -> str:
  """The Markdown report of whatever results.json holds so far: one table per section."""
  env = results.get("environment") or {}
  lines = ["# GPU check", ""]
  lines += [f"- {key}: {value}" for key, value in env.items()] or ["- environment: pending"]
  lines += [f"- command: `{' '.join(results['command'])}`, budget {results['budget_s']} s"]
  for name, section in results["sections"].items():
    status = f"status: **{section.get('status', '?')}**"
    if section.get("elapsed_s") is not None:
      status += f", {section['elapsed_s']} s of its {section.get('budget_s')} s budget"
    lines += ["", f"## {name}", "", status]
    lines += [f"- {key}: {section[key]}" for key in ("note", "current") if section.get(key)]
    if "summary" in section:
      lines += ["", f"{section['summary']} (`pytest {' '.join(section['args'])}`, {TESTS_LOG})"]
    # One table per run of cases with the same implementations (the sweep's configs differ).
    groups: list[list[dict[str, Any]]] = []
    for case in section.get("cases", []):
      impls = list(case.get("results", {}))
      if groups and impls and impls != list(groups[-1][0].get("results", {})):
        groups.append([case])
      elif groups:
        groups[-1].append(case)
      else:
        groups.append([case])
    for cases in groups:
      impls = list(cases[0].get("results", {})) or ["result"]
      lines += ["", f"Each cell: {cases[0].get('legend', 'what happened')}.", ""]
      if name == "sweep":  # A config per row: their labels are long.
        rows = [[i] + [_cell(case.get("results", {}).get(i)) for case in cases] for i in impls]
        lines += _table(["config", *(case["title"] for case in cases)], rows)
        continue
      rows = [
        [case["title"], *([case["error"]] if "error" in case else [])]
        + [_cell(case["results"].get(i)) for i in impls if "results" in case]
        for case in cases
      ]
      lines += _table(["case", *impls], rows)
  return "\n".join(lines) + "\n"


def draw_figure(results: dict[str, Any], path: Path) -> bool:
  """Elementwise GB/s against size, and fused TFLOP/s per case, if matplotlib is there."""
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  sections = results["sections"]
  fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
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
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)
  return True


# 3. Measuring: the environment, checks against references, interleaved timing.


@dataclasses.dataclass(frozen=True)
class Context:
  """How a section's process measures.

  Attributes:
    compiled: whether Pallas compiles here (a Hopper GPU); if not, its kernels run under GPU
      interpret mode, checked, not timed.
    plan: the cases' shapes.
    chip: this device's datasheet limits, if it is one of `CHIPS`.
    budget: the `benchmarks.timing.Budget` of every interleaved group.
  """

  compiled: bool
  plan: Plan
  chip: Chip | None
  budget: Any

  @classmethod
  def create(cls, quick: bool) -> Context:
    import jax

    import mish_jax
    from benchmarks import timing

    compiled = mish_jax.pallas_compiles()
    kind = jax.devices()[0].device_kind
    plan = (QUICK if quick else FULL) if compiled else INTERPRET
    if compiled:
      budget = timing.Budget(target_s=0.15, min_samples=5, max_samples=40, min_sample_s=2e-3)
    else:
      budget = timing.Budget(target_s=0.01, min_samples=3, max_samples=5)
    return cls(compiled, plan, next((c for c in CHIPS if c.name in kind), None), budget)


def _git(*args: str) -> str | None:
  try:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout.strip() if done.returncode == 0 else None


def environment(ctx: Context, commit: str | None) -> dict[str, Any]:
  """The device, versions, date and code of this run."""
  import jax

  device = jax.devices()[0]
  digest = hashlib.sha256()
  for path in sorted([*REPO_ROOT.glob("kernels/*.py"), *REPO_ROOT.glob("mish_jax/**/*.py")]):
    digest.update(path.read_bytes())
  git_commit = _git("rev-parse", "HEAD")
  if git_commit and _git("status", "--porcelain", "--", "kernels", "mish_jax", "benchmarks"):
    git_commit += " (with uncommitted changes)"
  return {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "device_kind": device.device_kind,
    "platform": device.platform,
    "compute_capability": getattr(device, "compute_capability", None),
    "chip": ctx.chip.name if ctx.chip else None,
    "mode": "compiled Pallas, timed" if ctx.compiled else "Pallas under GPU interpret mode",
    "jax": jax.__version__,
    "jaxlib": metadata.version("jaxlib"),
    "python": platform.python_version(),
    "git_commit": git_commit or commit,
    "source_sha256": digest.hexdigest()[:16],  # of kernels/ and mish_jax/, with or without git
  }


def one_line(err: BaseException) -> str:
  text = str(err).strip().splitlines()
  return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def reset_interpreter() -> None:
  """After a kernel fails under GPU interpret mode, the mode must be reset before the next."""
  try:
    from jax._src.pallas.mosaic_gpu.interpret import interpret_pallas_call
  except ImportError:
    return
  interpret_pallas_call.reset_gpu_interpret_mode_state()


# Elementwise: max |actual - ref| / (rtol |ref| + atol) against float64, 1 at the tolerance, the
# tolerance of benchmarks/run.py. Dense: the relative Frobenius error against float32 at HIGHEST
# matmul precision; float32 operands go through tf32 in `wgmma` and in XLA's default matmul.
ELEMENTWISE_TOLERANCE = {"float32": (2e-5, 2e-6), "bfloat16": (2**-5, 2**-7)}
DENSE_TOLERANCE = {"float32": 5e-3, "bfloat16": 1e-2}


def check_elementwise(outputs: Sequence[Any], refs: Sequence[Any], dtype: str) -> dict[str, Any]:
  import numpy as np

  rtol, atol = ELEMENTWISE_TOLERANCE[dtype]
  worst = 0.0
  for output, ref in zip(outputs, refs, strict=True):
    error = np.abs(np.asarray(output, np.float64) - ref) / (rtol * np.abs(ref) + atol)
    worst = max(worst, float(np.max(error)) if np.isfinite(error).all() else math.inf)
  return {"error": worst, "measure": "max error / tolerance", "ok": worst <= 1.0}


def check_dense(outputs: Sequence[Any], refs: Sequence[Any], dtype: str) -> dict[str, Any]:
  import jax.numpy as jnp

  worst = 0.0
  for output, ref in zip(outputs, refs, strict=True):
    diff = jnp.linalg.norm((output.astype(jnp.float32) - ref).ravel())
    error = float(diff / jnp.maximum(jnp.linalg.norm(ref.ravel()), 1e-30))
    worst = max(worst, error if math.isfinite(error) else math.inf)
  tolerance = DENSE_TOLERANCE[dtype]
  return {"error": worst, "measure": "relative Frobenius error", "ok": worst <= tolerance}


Calls = dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]


def measure(
  ctx: Context,
  calls: Calls,
  check: Callable[[str, Any], dict[str, Any]],
  untimed: Sequence[str],
  cost: tuple[int, int],
  roof: dict[str, Any] | None,
  baseline: str,
  refusals: tuple[type[Exception], ...] = (),
) -> dict[str, dict[str, Any]]:
  """Compiles, runs and checks each call, then times them interleaved and derives the rates.

  Args:
    ctx: the section's context; Pallas calls are timed only where they compile.
    calls: name -> (function, arguments).
    check: (name, result) -> the check's record.
    untimed: names checked but never timed (the interpreted kernels).
    cost: (bytes, FLOPs) of one call, for GB/s and TFLOP/s.
    roof: the case's `case_roofline`, or None.
    baseline: the name every speed-up is over.
    refusals: exceptions that mean "this config is refused", recorded apart from errors.

  Returns:
    name -> compile seconds, check, ms, GB/s, TFLOP/s, % of roofline, speed-up; or its error.
  """
  import jax

  from benchmarks import timing

  records: dict[str, dict[str, Any]] = {}
  ready = {}
  for name, (fn, args) in calls.items():
    try:
      compiled, compile_s = timing.compile_timed(fn, *args)
      result = jax.block_until_ready(compiled(*args))
      records[name] = {"compile_s": round(compile_s, 3), "check": check(name, result)}
      del result
      if ctx.compiled or name not in untimed:
        ready[name] = timing.bind(compiled, *args)
    except refusals as err:
      records[name] = {"refused": one_line(err)}
    except Exception as err:  # One implementation's failure is a result, not the case's end.
      traceback.print_exc()
      records[name] = {"error": one_line(err)}
      reset_interpreter()
  timings = timing.interleaved(ready, ctx.budget) if ready else {}
  num_bytes, flops = cost
  chip_roof = roof["chips"][ctx.chip.name] if roof and ctx.chip else None
  for name, t in timings.items():
    record = records[name]
    record.update(ms=t.median_s * 1e3, timing=t.to_json(), gb_s=num_bytes / t.median_s / 1e9)
    record["tflop_s"] = flops / t.median_s / 1e12
    if chip_roof:
      record["pct_roofline"] = 100 * chip_roof["min_s"] / t.median_s
    if baseline in timings and name != baseline:
      record["speedup"] = timing.median_ratio(timings[baseline], t)
  return records


# 4. The sections: each yields (title, run) cases; run() returns the case's record.

Case = tuple[str, Callable[[], dict[str, Any]]]
COPY, JAX_MISH, MATMUL = "copy (x ^ 0)", "jax.nn.mish", "x @ w + b (no activation)"
JAX_DENSE = "jax.nn.mish(x @ w + b)"
PALLAS_MISH, PALLAS_DENSE = "mish_jax.mish (pallas)", "mish_jax.linear_mish (pallas)"


def _with_backward(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn`'s output and the vjp of a cotangent passed last, as a training step needs them."""
  import jax

  def forward_and_backward(*args):
    *inputs, g = args
    y, pullback = jax.vjp(fn, *inputs)
    return (y, *pullback(g))

  return forward_and_backward


def _xor_zero(x, zero):
  """A copy XLA cannot elide: each element's bits XORed with a zero known only at run time."""
  from jax import lax

  return lax.bitcast_convert_type(lax.bitcast_convert_type(x, zero.dtype) ^ zero, x.dtype)


def _mish_inputs(size: int, dtype: str):
  """x ~ 4 N(0, 1), reaching past both of the kernels' clips, and a cotangent g ~ N(0, 1)."""
  import jax
  import jax.numpy as jnp

  key_x, key_g = jax.random.split(jax.random.key(size))
  x = (4.0 * jax.random.normal(key_x, (size,), jnp.float32)).astype(dtype)
  return x, jax.random.normal(key_g, (size,), jnp.float32).astype(dtype)


def _mish_check(x, g, outputs: str, dtype: str) -> Callable[[str, Any], dict[str, Any]]:
  """Checks "y", "dx" or "y,dx" on an evenly spaced subsample against float64 numpy."""
  import numpy as np

  from benchmarks import references

  stride = max(1, x.size // 2**16)
  x64, g64 = (np.asarray(a[::stride], np.float64) for a in (x, g))
  refs = {"y": references.mish(x64), "dx": g64 * references.mish_grad(x64)}
  names = outputs.split(",")

  def check(name, result):
    if name == COPY:
      ok = bool(np.array_equal(np.asarray(result[::stride]), np.asarray(x[::stride])))
      return {"error": 0.0 if ok else math.inf, "measure": "bits equal", "ok": ok}
    results = [result] if len(names) == 1 else list(result)
    return check_elementwise([r[::stride] for r in results], [refs[n] for n in names], dtype)

  return check


def elementwise_cases(ctx: Context) -> Iterator[Case]:
  """`mish_jax.mish` (Pallas, XLA) and `jax.nn.mish` beside a copy, per size, dtype, direction."""
  for dtype in ctx.plan.dtypes:
    for size in ctx.plan.sizes:
      for direction in DIRECTIONS:
        title = f"{_size_text(size)} {dtype} {direction}"
        yield title, functools.partial(_elementwise_case, ctx, size, dtype, direction, title)


def _elementwise_case(ctx: Context, size: int, dtype: str, direction: str, title: str) -> dict:
  import jax
  import jax.numpy as jnp

  import mish_jax

  x, g = _mish_inputs(size, dtype)
  zero = jnp.zeros((), {2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize])
  calls: Calls = {COPY: (_xor_zero, (x, zero))}
  for name, fn in {
    JAX_MISH: jax.nn.mish,
    "mish_jax.mish (xla)": functools.partial(mish_jax.mish, implementation="xla"),
    PALLAS_MISH: functools.partial(mish_jax.mish, implementation="pallas"),
  }.items():
    calls[name] = (fn, (x,)) if direction == "forward" else (_with_backward(fn), (x, g))
  check = _mish_check(x, g, "y" if direction == "forward" else "y,dx", dtype)
  roof = case_roofline("elementwise", (size,), dtype, direction)
  cost = (roof["bytes"], roof["flops"])
  records = measure(ctx, calls, check, [PALLAS_MISH], cost, roof, JAX_MISH)
  copy = records[COPY]
  if copy.get("ms"):
    copy["gb_s"] = 2 * size * x.dtype.itemsize / copy["ms"] / 1e6  # It reads and writes x once.
    for record in records.values():
      if record.get("ms"):
        record["pct_copy"] = 100 * record["gb_s"] / copy["gb_s"]
  copy.pop("pct_roofline", None), copy.pop("speedup", None)
  for record in records.values():
    record.pop("tflop_s", None)
  legend = "ms, GB/s, % of the copy's GB/s, % of roofline, speed-up over jax.nn.mish"
  return dict(title=title, size=size, dtype=dtype, direction=direction, roofline=roof,
              legend=legend, results=records)  # fmt: skip


def _dense_inputs(shape: tuple[int, int, int], dtype: str):
  import jax
  import jax.numpy as jnp

  m, k, n = shape
  keys = jax.random.split(jax.random.key(m + k + n), 4)
  x = jax.random.normal(keys[0], (m, k), jnp.float32).astype(dtype)
  w = (jax.random.normal(keys[1], (k, n), jnp.float32) / math.sqrt(k)).astype(dtype)
  b = jax.random.normal(keys[2], (n,), jnp.float32).astype(dtype)
  return x, w, b, jax.random.normal(keys[3], (m, n), jnp.float32).astype(dtype)


def _dense_check(inputs, direction: str, dtype: str) -> Callable[[str, Any], dict[str, Any]]:
  """Checks against float32 at HIGHEST precision: `x @ w + b` without Mish, the others with."""
  import jax
  import jax.numpy as jnp

  def dense(activate, x, w, b):
    z = jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST) + b
    return jax.nn.mish(z) if activate else z

  f32 = [a.astype(jnp.float32) for a in inputs]
  refs = {}
  for activate in (False, True):
    fn = functools.partial(dense, activate)
    if direction == "forward":
      refs[activate] = [jax.jit(fn)(*f32[:3])]
    else:
      refs[activate] = list(jax.jit(_with_backward(fn))(*f32))

  def check(name, result):
    outputs = [result] if direction == "forward" else list(result)
    return check_dense(outputs, refs[name != MATMUL], dtype)

  return check


def fused_cases(ctx: Context) -> Iterator[Case]:
  """`linear_mish` (Pallas, XLA), `jax.nn.mish(x @ w + b)`, `x @ w + b`, per shape, direction."""
  for shape, dtype in ctx.plan.shapes:
    for direction in DIRECTIONS:
      title = f"{' x '.join(map(str, shape))} {dtype} {direction}"
      yield title, functools.partial(_fused_case, ctx, shape, dtype, direction, title)


def _fused_case(ctx: Context, shape, dtype: str, direction: str, title: str) -> dict:
  import jax

  import mish_jax

  inputs = _dense_inputs(shape, dtype)
  calls: Calls = {}
  for name, fn in {
    MATMUL: lambda x, w, b: x @ w + b,
    JAX_DENSE: lambda x, w, b: jax.nn.mish(x @ w + b),
    "mish_jax.linear_mish (xla)": functools.partial(mish_jax.linear_mish, implementation="xla"),
    PALLAS_DENSE: functools.partial(mish_jax.linear_mish, implementation="pallas"),
  }.items():
    calls[name] = (fn, inputs[:3]) if direction == "forward" else (_with_backward(fn), inputs)
  check = _dense_check(inputs, direction, dtype)
  roof = case_roofline("dense", shape, dtype, direction)
  cost = (roof["bytes"], roof["flops"])
  records = measure(ctx, calls, check, [PALLAS_DENSE], cost, roof, JAX_DENSE)
  for record in records.values():
    record.pop("gb_s", None)
  legend = "ms, TFLOP/s, % of roofline, speed-up over jax.nn.mish(x @ w + b)"
  return dict(title=title, shape=shape, dtype=dtype, direction=direction, roofline=roof,
              legend=legend, results=records)  # fmt: skip


# A doubled tile is also tried with the pipeline this much shallower, to fit in shared memory.
_STAGE_FIELDS = ("max_concurrent_steps", "num_stages")


def tuning_candidates(
  module: Any, fn: Callable[..., Any], dtype: str, limit: int
) -> list[tuple[str, dict[str, Any]]]:
  """A kernel module's default `TuningConfig` and its neighbours, as keyword arguments of `fn`.

  The default is `module.default_config(dtype)`, or `module.TuningConfig()`. Each integer field
  is halved and doubled in turn, a doubled one also with the pipeline depth halved; the configs
  that the class or its `validate(dtype)` refuses are dropped (those only the kernel's call
  refuses, e.g. for shared memory, are timed as refused).

  Returns:
    Up to `limit` (label, keyword arguments): `config=` if `fn` takes one, else the fields.
  """
  import jax.numpy as jnp

  default_config = getattr(module, "default_config", None)
  default = default_config(jnp.dtype(dtype)) if default_config else module.TuningConfig()
  fields = dataclasses.asdict(default)
  ints = {name: value for name, value in fields.items() if type(value) is int}
  stages = next((name for name in _STAGE_FIELDS if ints.get(name, 0) > 1), None)
  changes = []
  for name, value in ints.items():
    changes += [{name: value // 2}, {name: 2 * value}]
    if stages and name != stages:
      changes.append({name: 2 * value, stages: ints[stages] // 2})
  configs = [default]
  for change in changes:
    try:
      config = dataclasses.replace(default, **change)
      if hasattr(config, "validate"):
        config.validate(jnp.dtype(dtype))
    except ValueError:
      continue
    if config not in configs:
      configs.append(config)
  takes_config = "config" in inspect.signature(fn).parameters
  candidates = []
  for config in configs[:limit]:
    values = dataclasses.asdict(config)
    changed = ", ".join(f"{k}={v}" for k, v in values.items() if v != fields[k])
    label = changed or f"default: {config}"
    candidates.append((label, {"config": config} if takes_config else values))
  return candidates


def sweep_cases(ctx: Context) -> Iterator[Case]:
  """Both kernels over their tuning configs, against the default config in the same rounds."""
  for dtype in ctx.plan.sweep_dtypes:
    for kernel in ("mish_forward", "mish_backward"):
      title = f"{kernel} {_size_text(ctx.plan.sweep_size)} {dtype}"
      yield title, functools.partial(_elementwise_sweep, ctx, kernel, dtype, title)
  for shape in ctx.plan.sweep_shapes:
    title = f"linear_mish {' x '.join(map(str, shape))} bfloat16"
    yield title, functools.partial(_fused_sweep, ctx, shape, "bfloat16", title)


def _elementwise_sweep(ctx: Context, kernel: str, dtype: str, title: str) -> dict[str, Any]:
  from mish_jax.kernels import mish as mish_kernels

  x, g = _mish_inputs(ctx.plan.sweep_size, dtype)
  fn = getattr(mish_kernels, kernel)
  args = (x,) if kernel == "mish_forward" else (x, g)
  configs = tuning_candidates(mish_kernels, fn, dtype, ctx.plan.max_sweep_configs)
  interpret = not ctx.compiled
  calls = {label: (functools.partial(fn, **kw, interpret=interpret), args) for label, kw in configs}
  check = _mish_check(x, g, "y" if kernel == "mish_forward" else "dx", dtype)
  cost = ((len(args) + 1) * x.size * x.dtype.itemsize, 0)  # Its inputs read, its output written.
  records = measure(ctx, calls, check, list(calls), cost, None, next(iter(calls)), (ValueError,))
  for record in records.values():
    record.pop("tflop_s", None)
  return dict(title=title, legend="ms, GB/s, speed-up over the default", results=records)


def _fused_sweep(ctx: Context, shape, dtype: str, title: str) -> dict[str, Any]:
  from mish_jax.kernels import linear_mish as linear_mish_kernels

  inputs = _dense_inputs(shape, dtype)
  fn = linear_mish_kernels.linear_mish
  configs = tuning_candidates(linear_mish_kernels, fn, dtype, ctx.plan.max_sweep_configs)
  interpret = not ctx.compiled
  calls = {
    label: (functools.partial(fn, **kw, interpret=interpret), inputs[:3]) for label, kw in configs
  }
  check = _dense_check(inputs, "forward", dtype)
  roof = case_roofline("dense", shape, dtype, "forward")
  cost = (roof["bytes"], roof["flops"])
  records = measure(ctx, calls, check, list(calls), cost, roof, next(iter(calls)), (ValueError,))
  for record in records.values():
    record.pop("gb_s", None)
  legend = "ms, TFLOP/s, % of roofline, speed-up over the default"
  return dict(title=title, roofline=roof, legend=legend, results=records)


_PYTEST = (
  "import sys; sys.path.insert(0, {root!r}); from benchmarks.gpu_check import ensure_importable; "
  "ensure_importable(); import pytest; sys.exit(pytest.main(sys.argv[1:]))"
)


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
  command = [sys.executable, "-c", _PYTEST.format(root=str(REPO_ROOT)), *args]
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


def run_cases(out: Path, section: str, cases: Iterator[Case], deadline: float) -> None:
  """Runs a section's cases until `deadline` (monotonic), recording each as it finishes."""
  records = []
  for title, run in cases:
    if time.monotonic() > deadline:
      records.append({"title": title, "error": "skipped: the section's budget ran out"})
      continue
    update(out, section, current=title, cases=records)
    print(f"[gpu_check] {section}: {title}", flush=True)
    start = time.monotonic()
    try:
      record = run()
    except Exception as err:  # A case's failure is recorded, and the next case runs.
      traceback.print_exc()
      record = {"title": title, "error": one_line(err)}
      reset_interpreter()
    records.append(record | {"elapsed_s": round(time.monotonic() - start, 2)})
  update(out, section, current=None, cases=records, status="done")


SECTION_CASES = {"elementwise": elementwise_cases, "fused": fused_cases, "sweep": sweep_cases}


def run_section(args: argparse.Namespace) -> int:
  """The body of one section's process (`--section NAME`)."""
  ensure_importable()
  deadline = time.monotonic() + args.deadline
  if args.section == "tests":  # Before this process's JAX takes the GPU's memory.
    record = run_tests(args.out, args.deadline)
  ctx = Context.create(args.quick)
  if json.loads((args.out / RESULTS).read_text())["environment"] is None:
    update(args.out, environment=environment(ctx, args.commit))
  if args.section != "tests":
    run_cases(args.out, args.section, SECTION_CASES[args.section](ctx), deadline)
    return 0
  if ctx.compiled and not record["counts"].get("passed"):
    record |= {"status": "failed", "note": "no compiled test ran on this Hopper GPU"}
  elif not ctx.compiled:
    record["note"] = "the compiled tests skip where Pallas does not compile"
  update(args.out, args.section, **record)
  return 0


# 5. The command line: the parent process runs each section in a child under its budget.


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


def run(args: argparse.Namespace) -> int:
  """Runs the sections one by one, each in a process killed at its budget; the exit status."""
  out: Path = args.out
  command = [Path(sys.argv[0]).name, *sys.argv[1:]]
  header = {"command": command, "budget_s": args.budget, "environment": None, "sections": {}}
  write_json(out / RESULTS, header)
  total_share = sum(SECTION_SHARES[name] for name in args.sections)
  all_problems = []
  for index, name in enumerate(args.sections, 1):
    budget = args.budget * SECTION_SHARES[name] / total_share
    progress = f"[gpu_check] {index}/{len(args.sections)} {name}"
    print(f"{progress}: started, budget {budget:.0f} s", flush=True)
    update(out, name, status="running", budget_s=round(budget))
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
      section = update(out, name, status="timeout", note=note)["sections"][name]
    elif section.get("status") == "running":
      note = f"its process exited with status {status} in case {section.get('current')} ({LOG})"
      section = update(out, name, status="crashed", note=note)["sections"][name]
    elapsed = round(time.monotonic() - start, 1)
    update(out, name, elapsed_s=elapsed)
    found = problems(section)
    all_problems += found
    what = f"{len(section['cases'])} cases" if "cases" in section else section.get("summary", "")
    listed = f"; {len(found)} problems: {'; '.join(found)}"[:600] if found else ""
    print(f"{progress}: {section['status']} in {elapsed:.0f} s, {what}{listed}", flush=True)
  figure = draw_figure(json.loads((out / RESULTS).read_text()), out / FIGURE)
  files = [RESULTS, REPORT, LOG] + ([TESTS_LOG] if "tests" in args.sections else [])
  files += [FIGURE] if figure else []
  verdict = f"{len(all_problems)} problems" if all_problems else "every section passed"
  print(f"[gpu_check] {verdict}; wrote {', '.join(files)} in {out}", flush=True)
  return 1 if all_problems else 0


class ArgumentParser(argparse.ArgumentParser):
  """Reports a usage error as one line on stderr, then exits with status 2."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def _sections(text: str) -> tuple[str, ...]:
  names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
  unknown = [name for name in names if name not in SECTIONS]
  if unknown or not names:
    raise argparse.ArgumentTypeError(
      f"unknown section {', '.join(map(repr, unknown)) or '(none given)'}: "
      f"choose from {','.join(SECTIONS)}"
    )
  return names


def _budget(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
  if not 10 <= value <= 3600:
    raise argparse.ArgumentTypeError(f"must be between 10 and 3600 seconds, not {text}")
  return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  """The flags; a usage error exits with status 2 and one line on stderr."""
  summary, details = __doc__.split("\n\n", 1)
  parser = ArgumentParser(
    prog="gpu_check.py",
    description=summary,
    epilog=details,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  files = f"{RESULTS}, {REPORT}, {LOG}, {TESTS_LOG} and, with matplotlib, {FIGURE}"
  parser.add_argument("--out", type=Path, metavar="DIR", help=f"a new or empty folder: {files}")
  parser.add_argument(
    "--quick",
    action="store_true",
    help="on a Hopper GPU: 2 sizes and 2 dense "
    "shapes; elsewhere the tiny interpret-mode shapes are used anyway",
  )
  parser.add_argument(
    "--sections",
    type=_sections,
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
  if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
    parser.error(f"--out {args.out} must be a new or empty folder")
  try:
    args.out.mkdir(parents=True, exist_ok=True)
  except OSError as err:
    parser.error(f"--out {args.out} cannot be created: {err.strerror or err}")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  if args.roofline:
    print(roofline_markdown(), end="")
    return 0
  return run_section(args) if args.section else run(args)


if __name__ == "__main__":
  # A terminated run (the device tool's time limit) ends its section's processes with it.
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
  sys.exit(main())
