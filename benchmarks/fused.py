"""Section 2: a dense layer with Mish, `mish(x @ w + b)`, unfused in XLA and fused.

The forward is `y = f(x, w, b)`; the forward+backward, as in training, is `y` and the
gradients `(dx, dw, db)` of a given cotangent `g` (`jax.vjp`).

The roofline of a case is min(peak matmul rate, bandwidth x arithmetic intensity), with the peak
rate the faster of two large plain square matmuls of the same dtype and the bandwidth a copy's,
all timed in the same interleaved rounds as the case, so the machine's drift hits them alike. FLOPs
count the matmuls only (2MNK forward, 6MNK forward+backward); bytes are the compulsory traffic,
each input read once and each output written once, which no implementation can beat:

* forward: x, w, b read, y written: (MK + KN + N + MN) * itemsize.
* forward+backward: x, w, b, g read, y, dx, dw, db written: (2MK + 2KN + 2MN + 2N) * itemsize.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import mish_jax
from benchmarks import references, timing

Dense = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
Shape = tuple[int, int, int]

PALLAS = "mish_jax.linear_mish (pallas)"
JAX_MISH = "jax.nn.mish(x @ w + b)"
# name -> (the op, whether Mish follows the matmul); the plain dense layer is the floor.
IMPLEMENTATIONS: dict[str, tuple[Dense, bool]] = {
  "x @ w + b (no activation)": (lambda x, w, b: x @ w + b, False),
  JAX_MISH: (lambda x, w, b: jax.nn.mish(x @ w + b), True),
  "mish_jax.mish(x @ w + b)": (
    lambda x, w, b: mish_jax.mish(x @ w + b, implementation="xla"),
    True,
  ),
  "mish_jax.linear_mish (default)": (mish_jax.linear_mish, True),
  PALLAS: (functools.partial(mish_jax.linear_mish, implementation="pallas"), True),
}
DIRECTIONS = ("forward", "forward+backward")
PEAK, COPY = "peak matmul", "copy"


def _op(name: str, direction: str) -> Callable[..., Any]:
  fn = IMPLEMENTATIONS[name][0]
  if direction == "forward":
    return lambda x, w, b, g: fn(x, w, b)

  def forward_and_backward(x, w, b, g):
    y, pullback = jax.vjp(fn, x, w, b)
    return y, *pullback(g)

  return forward_and_backward


def flops(shape: Shape, direction: str) -> int:
  """The matmuls' floating-point operations."""
  m, k, n = shape
  return 2 * m * n * k * (1 if direction == "forward" else 3)


def traffic(shape: Shape, direction: str, dtype: jnp.dtype) -> int:
  """The bytes of the model in the module docstring."""
  m, k, n = shape
  elements = m * k + k * n + n + m * n
  if direction != "forward":
    elements = 2 * (m * k + k * n + n + m * n)
  return elements * jnp.dtype(dtype).itemsize


def _inputs(shape: Shape, dtype: jnp.dtype) -> tuple[jax.Array, ...]:
  """x, w, b and the cotangent g."""
  m, k, n = shape
  kx, kw, kb, kg = jax.random.split(jax.random.key(m + k + n), 4)
  # Unit-variance pre-activations: Mish's curved part, not a saturated tail.
  x = jax.random.normal(kx, (m, k), jnp.float32)
  w = jax.random.normal(kw, (k, n), jnp.float32) / np.sqrt(k)
  b = 0.1 * jax.random.normal(kb, (n,), jnp.float32)
  g = jax.random.normal(kg, (m, n), jnp.float32)
  return tuple(a.astype(dtype) for a in (x, w, b, g))


def _references(
  x: np.ndarray, w: np.ndarray, b: np.ndarray, g: np.ndarray
) -> dict[tuple[bool, str], list[np.ndarray]]:
  """(mish follows, direction) -> the float64 results: [y] forward, [y, dx, dw, db] backward."""
  z = x @ w + b
  refs: dict[tuple[bool, str], list[np.ndarray]] = {}
  for activated in (False, True):
    y = references.mish(z) if activated else z
    dz = g * references.mish_grad(z) if activated else g
    refs[activated, "forward"] = [y]
    refs[activated, "forward+backward"] = [y, dz @ w.T, x.T @ dz, dz.sum(0)]
  return refs


def _check(results: Sequence[Any], expected: Sequence[np.ndarray], dtype: jnp.dtype) -> dict:
  rtol, share = references.FUSED_TOLERANCE[jnp.dtype(dtype)]
  checks = [
    references.check(result, ref, rtol, share * float(np.max(np.abs(ref))))
    for result, ref in zip(results, expected, strict=True)
  ]
  worst = max(checks, key=lambda check: check["worst"])
  return {**worst, "ok": all(check["ok"] for check in checks)}


class Fused:
  """The fused-dense section: one case per (shape, dtype), then the Pallas checks.

  Args:
    shapes: (M, K, N) of each case: x is (M, K), w (K, N), b (N,).
    dtypes: the dtypes.
    budget: the timing budget of each case.
    peak_sizes: the sides of the square matmuls that measure the peak rate (the faster counts:
      on CPU the largest is not always the fastest per FLOP).
    bandwidth_size: float32 elements of the copy that measures the bandwidth.
    pallas_check_shape: the shape at which an interpreted Pallas kernel is checked (not timed).
    notes: lines for the report about the settings, e.g. a shape cut down for this device.
  """

  def __init__(
    self,
    shapes: Sequence[Shape],
    dtypes: Sequence[jnp.dtype],
    budget: timing.Budget,
    peak_sizes: Sequence[int],
    bandwidth_size: int,
    pallas_check_shape: Shape,
    notes: Sequence[str] = (),
  ):
    self.shapes = [tuple(shape) for shape in shapes]
    self.dtypes = tuple(map(jnp.dtype, dtypes))
    self.budget = budget
    self.peak_sizes = tuple(peak_sizes)
    self.bandwidth_size = bandwidth_size
    self.pallas_check_shape = tuple(pallas_check_shape)
    self.notes = list(notes)
    self.pallas_timed = mish_jax.pallas_compiles()
    self.timed = [name for name in IMPLEMENTATIONS if name != PALLAS or self.pallas_timed]
    self.baselines: list[dict[str, Any]] = []
    self.records: list[dict[str, Any]] = []
    self.pallas_checks: list[dict[str, Any]] = []

  def cases(self) -> list[timing.Case]:
    """Every (shape, dtype) group, then the interpreted Pallas checks."""
    cases = [
      timing.Case(f"fused {dtype.name} {'x'.join(map(str, shape))}", self._group(shape, dtype))
      for shape in self.shapes
      for dtype in self.dtypes
    ]
    if not self.pallas_timed:
      cases += [
        timing.Case(f"fused pallas check {dtype.name}", self._pallas_check(dtype))
        for dtype in self.dtypes
      ]
    return cases

  def _baseline_calls(self, dtype: jnp.dtype) -> dict[tuple[str, Any], timing.Call]:
    """The peak-rate matmuls of `dtype` and the float32 copies, compiled, with inputs bound."""
    calls: dict[tuple[str, Any], timing.Call] = {}
    for size in self.peak_sizes:
      a = jax.random.normal(jax.random.key(size), (size, size), jnp.float32).astype(dtype)
      compiled, _ = timing.compile_timed(jnp.matmul, a, a)
      calls[PEAK, size] = timing.bind(compiled, a, a)
    copies = timing.copy_calls(jnp.ones((self.bandwidth_size,), jnp.float32))
    return calls | {(COPY, variant): call for variant, (call, _) in copies.items()}

  def _group(self, shape: Shape, dtype: jnp.dtype) -> Callable[[], None]:
    def run() -> None:
      args = _inputs(shape, dtype)
      expected = _references(*map(references.as_float64, args))
      calls = self._baseline_calls(dtype)
      compile_s, checks = {}, {}
      for name in self.timed:
        activated = IMPLEMENTATIONS[name][1]
        for direction in DIRECTIONS:
          compiled, compile_s[name, direction] = timing.compile_timed(_op(name, direction), *args)
          result = compiled(*args)
          results = [result] if direction == "forward" else list(result)
          checks[name, direction] = _check(results, expected[activated, direction], dtype)
          calls[name, direction] = timing.bind(compiled, *args)
      del expected, result, results
      timings = timing.interleaved(calls, self.budget)

      peak = max(2 * size**3 / timings[PEAK, size].median_s for size in self.peak_sizes)
      copy_s = min(t.median_s for (name, _), t in timings.items() if name == COPY)
      bandwidth = timing.stream_bytes(self.bandwidth_size, jnp.float32) / copy_s
      self.baselines.append(
        {
          "dtype": dtype.name,
          "shape": list(shape),
          "peak_tflops": peak / 1e12,
          "bandwidth_gb_per_s": bandwidth / 1e9,
        }
      )
      for name in self.timed:
        for direction in DIRECTIONS:
          t = timings[name, direction]
          work, nbytes = flops(shape, direction), traffic(shape, direction, dtype)
          roofline = min(peak, bandwidth * work / nbytes)
          self.records.append(
            {
              "implementation": name,
              "direction": direction,
              "dtype": dtype.name,
              "shape": list(shape),
              "flops": work,
              "bytes": nbytes,
              "intensity": work / nbytes,
              "compile_s": compile_s[name, direction],
              "timing": t.to_json(),
              "ms": t.median_s * 1e3,
              "tflops": work / t.median_s / 1e12,
              "roofline_tflops": roofline / 1e12,
              "pct_of_roofline": 100 * work / t.median_s / roofline,
              "speedup_vs_jax_nn_mish": timing.median_ratio(timings[JAX_MISH, direction], t),
              "check": checks[name, direction],
            }
          )

    return run

  def _pallas_check(self, dtype: jnp.dtype) -> Callable[[], None]:
    def run() -> None:
      args = _inputs(self.pallas_check_shape, dtype)
      expected = _references(*map(references.as_float64, args))
      for direction in DIRECTIONS:
        result = jax.jit(_op(PALLAS, direction))(*args)
        results = [result] if direction == "forward" else list(result)
        self.pallas_checks.append(
          {
            "implementation": PALLAS,
            "direction": direction,
            "dtype": dtype.name,
            "shape": list(self.pallas_check_shape),
            "check": _check(results, expected[True, direction], dtype),
          }
        )

    return run

  def results(self) -> dict[str, Any]:
    """The section's JSON: settings, per-case baselines, timed records and the Pallas checks."""
    return {
      "shapes": [list(shape) for shape in self.shapes],
      "dtypes": [dtype.name for dtype in self.dtypes],
      "directions": list(DIRECTIONS),
      "implementations": self.timed,
      "notes": self.notes,
      "model": "forward+backward = y and the vjp of a cotangent g; FLOPs: the matmuls only, "
      "2MNK forward, 6MNK forward+backward; bytes, compulsory: (MK + KN + N + MN) forward, "
      "2 (MK + KN + N + MN) forward+backward, times the itemsize; roofline = min(peak matmul "
      "rate, bandwidth x FLOPs / bytes), both measured in the case's own rounds",
      "peak_matmul_sizes": list(self.peak_sizes),
      "bandwidth_copy_size": self.bandwidth_size,
      "baselines": self.baselines,
      "pallas": {
        "timed": self.pallas_timed,
        "note": "compiled and timed"
        if self.pallas_timed
        else f"interpret mode on {jax.default_backend()}: correctness only, checked at "
        f"{'x'.join(map(str, self.pallas_check_shape))}, not timed",
        "checks": self.pallas_checks,
      },
      "records": self.records,
    }
