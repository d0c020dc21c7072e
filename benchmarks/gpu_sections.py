"""The GPU check's measured sections: elementwise, fused and the tuning sweep.

Each section yields (title, run) cases; `run()` returns the case's record. Every case is compiled,
checked against a reference on its very inputs, warmed up and timed in interleaved rounds with
its baseline in the same process (`measure`, on `benchmarks.timing`). Where Pallas does not
compile, its kernels run under Mosaic GPU interpret mode: checked, not timed.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import mish_jax
from benchmarks import references, timing
from benchmarks.roofline import (
  CHIPS,
  DIRECTIONS,
  FULL,
  INTERPRET,
  QUICK,
  Chip,
  Plan,
  case_roofline,
  size_text,
)

Case = tuple[str, Callable[[], dict[str, Any]]]
Calls = dict[str, tuple[Callable[..., Any], tuple[Any, ...]]]
COPY, JAX_MISH, MATMUL = "copy (x ^ 0)", "jax.nn.mish", "x @ w + b (no activation)"
JAX_DENSE = "jax.nn.mish(x @ w + b)"
PALLAS_MISH, PALLAS_DENSE = "mish_jax.mish (pallas)", "mish_jax.linear_mish (pallas)"
# Dense: the relative Frobenius error against float32 at HIGHEST matmul precision; float32
# operands go through tf32 in `wgmma` and in XLA's default matmul.
DENSE_TOLERANCE = {"float32": 5e-3, "bfloat16": 1e-2}


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
  budget: timing.Budget

  @property
  def mode(self) -> str:
    """How Pallas runs here, for the results' environment."""
    return "compiled Pallas, timed" if self.compiled else "Pallas under GPU interpret mode"

  @classmethod
  def create(cls, quick: bool) -> Context:
    compiled = mish_jax.pallas_compiles()
    kind = jax.devices()[0].device_kind
    plan = (QUICK if quick else FULL) if compiled else INTERPRET
    if compiled:
      budget = timing.Budget(target_s=0.15, min_samples=5, max_samples=40, min_sample_s=2e-3)
    else:
      budget = timing.Budget(target_s=0.01, min_samples=3, max_samples=5)
    return cls(compiled, plan, next((c for c in CHIPS if c.name in kind), None), budget)


def error_summary(err: BaseException) -> str:
  """The exception's type and the first line of its message, for a record."""
  text = str(err).strip().splitlines()
  return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def reset_interpreter() -> None:
  """After a kernel fails under GPU interpret mode, the mode must be reset before the next."""
  from mish_jax.kernels import jax_compat

  try:
    interpret = jax_compat.interpret_pallas_call
  except jax_compat.PallasUnavailableError:
    return
  interpret.reset_gpu_interpret_mode_state()


def check_elementwise(outputs: Sequence[Any], refs: Sequence[Any], dtype: str) -> dict[str, Any]:
  """The worst error over `benchmarks/run.py`'s tolerance (1 at the tolerance), float64 refs."""
  rtol, atol = references.ELEMENTWISE_TOLERANCE[jnp.dtype(dtype)]
  worst = max(
    references.check(output, ref, rtol, atol)["worst"]
    for output, ref in zip(outputs, refs, strict=True)
  )
  return {"error": worst, "measure": "max error / tolerance", "ok": worst <= 1.0}


def check_dense(outputs: Sequence[Any], refs: Sequence[Any], dtype: str) -> dict[str, Any]:
  """The worst relative Frobenius error against float32 references, within `DENSE_TOLERANCE`."""
  worst = 0.0
  for output, ref in zip(outputs, refs, strict=True):
    diff = jnp.linalg.norm((output.astype(jnp.float32) - ref).ravel())
    error = float(diff / jnp.maximum(jnp.linalg.norm(ref.ravel()), 1e-30))
    worst = max(worst, error if math.isfinite(error) else math.inf)
  tolerance = DENSE_TOLERANCE[dtype]
  return {"error": worst, "measure": "relative Frobenius error", "ok": worst <= tolerance}


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
      records[name] = {"refused": error_summary(err)}
    except Exception as err:  # One implementation's failure is a result, not the case's end.
      traceback.print_exc()
      records[name] = {"error": error_summary(err)}
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


def _with_backward(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn`'s output and the vjp of a cotangent passed last, as a training step needs them."""

  def forward_and_backward(*args):
    *inputs, g = args
    y, pullback = jax.vjp(fn, *inputs)
    return (y, *pullback(g))

  return forward_and_backward


# Elementwise.


def _mish_inputs(size: int, dtype: str) -> tuple[jax.Array, jax.Array]:
  """x ~ 4 N(0, 1), reaching past both of the kernels' clips, and a cotangent g ~ N(0, 1)."""
  key_x, key_g = jax.random.split(jax.random.key(size))
  x = (4.0 * jax.random.normal(key_x, (size,), jnp.float32)).astype(dtype)
  return x, jax.random.normal(key_g, (size,), jnp.float32).astype(dtype)


def _mish_check(x, g, outputs: str, dtype: str) -> Callable[[str, Any], dict[str, Any]]:
  """Checks "y", "dx" or "y,dx" on an evenly spaced subsample against float64 numpy."""
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
        title = f"{size_text(size)} {dtype} {direction}"
        yield title, functools.partial(_elementwise_case, ctx, size, dtype, direction, title)


def _elementwise_case(ctx: Context, size: int, dtype: str, direction: str, title: str) -> dict:
  x, g = _mish_inputs(size, dtype)
  zero = jnp.zeros((), {2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize])
  # A copy XLA cannot elide: each element's bits XORed with a zero known only at run time.
  calls: Calls = {COPY: (timing.xor_runtime_zero, (x, zero))}
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
    copy["gb_s"] = timing.stream_bytes(size, x.dtype) / copy["ms"] / 1e6  # x read and written.
    for record in records.values():
      if record.get("ms"):
        record["pct_copy"] = 100 * record["gb_s"] / copy["gb_s"]
  copy.pop("pct_roofline", None), copy.pop("speedup", None)
  for record in records.values():
    record.pop("tflop_s", None)
  legend = "ms, GB/s, % of the copy's GB/s, % of roofline, speed-up over jax.nn.mish"
  return dict(title=title, size=size, dtype=dtype, direction=direction, roofline=roof,
              legend=legend, results=records)  # fmt: skip


# Fused.


def _dense_inputs(shape: tuple[int, int, int], dtype: str) -> tuple[jax.Array, ...]:
  """x, w, b and the cotangent g, with unit-variance pre-activations."""
  m, k, n = shape
  keys = jax.random.split(jax.random.key(m + k + n), 4)
  x = jax.random.normal(keys[0], (m, k), jnp.float32).astype(dtype)
  w = (jax.random.normal(keys[1], (k, n), jnp.float32) / math.sqrt(k)).astype(dtype)
  b = jax.random.normal(keys[2], (n,), jnp.float32).astype(dtype)
  return x, w, b, jax.random.normal(keys[3], (m, n), jnp.float32).astype(dtype)


def _dense_check(inputs, direction: str, dtype: str) -> Callable[[str, Any], dict[str, Any]]:
  """Checks against float32 at HIGHEST precision: `x @ w + b` without Mish, the others with."""

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


# The sweep. A doubled tile is also tried with the pipeline this much shallower, to fit in
# shared memory.
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
      title = f"{kernel} {size_text(ctx.plan.sweep_size)} {dtype}"
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


SECTION_CASES = {"elementwise": elementwise_cases, "fused": fused_cases, "sweep": sweep_cases}
