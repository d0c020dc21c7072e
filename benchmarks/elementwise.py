"""Section 1: elementwise activations, forward and forward+backward, against a copy.

Every case reads `size` elements and writes `size`: the forward `f(x)`, and the forward+backward
`jax.grad(lambda x: f(x).sum())`, whose forward value is dead code that XLA drops. So both move
the bytes of a copy of `x`, and their throughput is comparable with the copy's, measured in the
same interleaved rounds.
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

PALLAS = "mish_jax.mish (pallas)"
# name -> (the op, the name of its float64 reference); the first are the baselines.
IMPLEMENTATIONS: dict[str, tuple[Callable[[jax.Array], jax.Array], str]] = {
  "jax.nn.relu": (jax.nn.relu, "relu"),
  "jax.nn.silu": (jax.nn.silu, "silu"),
  "jax.nn.mish": (jax.nn.mish, "mish"),
  "mish_jax.mish (xla)": (functools.partial(mish_jax.mish, implementation="xla"), "mish"),
  PALLAS: (functools.partial(mish_jax.mish, implementation="pallas"), "mish"),
}
DIRECTIONS = ("forward", "forward+backward")
COPY = "copy"


def _forward_and_backward(fn: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
  # The float32 sum keeps a bfloat16 reduction's rounding out of it; the cotangent is 1 either way.
  return jax.grad(lambda x: fn(x).astype(jnp.float32).sum())


def _op(name: str, direction: str) -> Callable[[jax.Array], jax.Array]:
  fn = IMPLEMENTATIONS[name][0]
  return fn if direction == "forward" else _forward_and_backward(fn)


def _inputs(size: int, dtype: jnp.dtype) -> jax.Array:
  # Uniform over [-10, 10]: both tails, where Mish saturates and where it underflows to -0.
  x = jax.random.uniform(jax.random.key(size), (size,), jnp.float32, -10.0, 10.0)
  return x.astype(dtype)


def _check(name: str, direction: str, x: Any, result: Any, dtype: jnp.dtype) -> dict[str, Any]:
  forward, derivative = references.ACTIVATIONS[IMPLEMENTATIONS[name][1]]
  reference = (forward if direction == "forward" else derivative)(references.as_float64(x))
  return references.check(result, reference, *references.ELEMENTWISE_TOLERANCE[jnp.dtype(dtype)])


class Elementwise:
  """The elementwise section: one case per (dtype, size), plus the Pallas correctness checks.

  Args:
    sizes: element counts.
    dtypes: the dtypes, e.g. float32 and bfloat16.
    budget: the timing budget of each case.
    check_points: how many evenly spaced elements of each result are checked in float64.
    pallas_check_size: the size at which interpreted Pallas kernels are checked (not timed).
  """

  def __init__(
    self,
    sizes: Sequence[int],
    dtypes: Sequence[jnp.dtype],
    budget: timing.Budget,
    check_points: int,
    pallas_check_size: int,
  ):
    self.sizes = tuple(sizes)
    self.dtypes = tuple(map(jnp.dtype, dtypes))
    self.budget = budget
    self.check_points = check_points
    self.pallas_check_size = pallas_check_size
    self.pallas_timed = mish_jax.pallas_compiles()
    self.timed = [name for name in IMPLEMENTATIONS if name != PALLAS or self.pallas_timed]
    self.copies: list[dict[str, Any]] = []
    self.records: list[dict[str, Any]] = []
    self.pallas_checks: list[dict[str, Any]] = []

  def cases(self) -> list[timing.Case]:
    """The cases, in order: every (dtype, size) group, then the interpreted Pallas checks."""
    cases = [
      timing.Case(f"elementwise {dtype.name} 2^{size.bit_length() - 1}", self._group(dtype, size))
      for dtype in self.dtypes
      for size in self.sizes
    ]
    if not self.pallas_timed:
      cases += [
        timing.Case(f"elementwise pallas check {dtype.name}", self._pallas_check(dtype))
        for dtype in self.dtypes
      ]
    return cases

  def _group(self, dtype: jnp.dtype, size: int) -> Callable[[], None]:
    def run() -> None:
      x = _inputs(size, dtype)
      points = np.unique(np.linspace(0, size - 1, min(size, self.check_points)).astype(np.int64))
      x_points = np.asarray(x)[points]
      calls: dict[tuple[str, str], timing.Call] = {}
      compile_s: dict[tuple[str, str], float] = {}
      copies = timing.copy_calls(x)
      for variant, (call, seconds) in copies.items():
        calls[COPY, variant], compile_s[COPY, variant] = call, seconds
      checks = {}
      for name in self.timed:
        for direction in DIRECTIONS:
          compiled, compile_s[name, direction] = timing.compile_timed(_op(name, direction), x)
          result = np.asarray(compiled(x))[points]
          checks[name, direction] = _check(name, direction, x_points, result, dtype)
          calls[name, direction] = timing.bind(compiled, x)
      timings = timing.interleaved(calls, self.budget)
      del calls, x  # Frees the largest arrays before the next group.

      variants = {variant: timings[COPY, variant] for variant in copies}
      best = min(variants, key=lambda variant: variants[variant].median_s)
      copy_s = variants[best].median_s
      nbytes = timing.stream_bytes(size, dtype)
      self.copies.append(
        {
          "dtype": dtype.name,
          "size": size,
          "bytes": nbytes,
          "best": best,
          "seconds": copy_s,
          "gb_per_s": nbytes / copy_s / 1e9,
          "variants": {
            variant: {**t.to_json(), "compile_s": compile_s[COPY, variant]}
            for variant, t in variants.items()
          },
        }
      )
      for name in self.timed:
        for direction in DIRECTIONS:
          t = timings[name, direction]
          self.records.append(
            {
              "implementation": name,
              "direction": direction,
              "dtype": dtype.name,
              "size": size,
              "bytes": nbytes,
              "compile_s": compile_s[name, direction],
              "timing": t.to_json(),
              "ms": t.median_s * 1e3,
              "gb_per_s": nbytes / t.median_s / 1e9,
              "pct_of_copy": 100 * copy_s / t.median_s,
              # Medians of per-round ratios: drift common to a round cancels.
              "speedup_vs_jax_nn_mish": timing.median_ratio(timings["jax.nn.mish", direction], t),
              "time_vs_silu": timing.median_ratio(t, timings["jax.nn.silu", direction]),
              "check": checks[name, direction],
            }
          )

    return run

  def _pallas_check(self, dtype: jnp.dtype) -> Callable[[], None]:
    def run() -> None:
      x = _inputs(self.pallas_check_size, dtype)
      for direction in DIRECTIONS:
        result = jax.jit(_op(PALLAS, direction))(x)
        self.pallas_checks.append(
          {
            "implementation": PALLAS,
            "direction": direction,
            "dtype": dtype.name,
            "size": self.pallas_check_size,
            "check": _check(PALLAS, direction, x, result, dtype),
          }
        )

    return run

  def results(self) -> dict[str, Any]:
    """The section's JSON: settings, copies, timed records and the Pallas checks."""
    return {
      "sizes": list(self.sizes),
      "dtypes": [dtype.name for dtype in self.dtypes],
      "directions": list(DIRECTIONS),
      "implementations": self.timed,
      "bytes_model": "2 * size * itemsize: one read of x and one write of y (forward) or of "
      "dx (forward+backward = grad of sum, whose forward value XLA drops)",
      "copy_model": "the faster of XLA's copy (jnp.copy) and x ^ 0, an XOR of the bits with a "
      "runtime zero",
      "pallas": {
        "timed": self.pallas_timed,
        "note": "compiled and timed"
        if self.pallas_timed
        else f"interpret mode on {jax.default_backend()}: correctness only, checked at "
        f"{self.pallas_check_size} elements, not timed",
        "checks": self.pallas_checks,
      },
      "copy": self.copies,
      "records": self.records,
    }
