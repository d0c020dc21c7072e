"""Compile-then-time helpers: compile time apart, warm-up, interleaved medians, baselines."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

Call = Callable[[], Any]
Key = TypeVar("Key", bound=Hashable)


class Case(NamedTuple):
  """One step of the progress bar: a name, and the work, which stores its own results."""

  name: str
  run: Callable[[], None]


@dataclasses.dataclass(frozen=True)
class Budget:
  """How long to time each case.

  Attributes:
    target_s: the time each case of an interleaved group gets, warm-up aside.
    min_samples: at least this many timed samples per case, whatever they cost.
    max_samples: at most this many.
    min_sample_s: a sample of a faster call is several back-to-back calls, so that the timer's
      resolution and Python's overhead stay small next to it.
  """

  target_s: float
  min_samples: int
  max_samples: int
  min_sample_s: float = 1e-3


@dataclasses.dataclass(frozen=True)
class Timing:
  """The seconds per call of one case: order statistics over its samples.

  Attributes:
    median_s: the median, the figure every ratio uses.
    min_s: the fastest sample.
    q25_s: the first quartile.
    q75_s: the third quartile.
    samples: how many samples.
    calls_per_sample: back-to-back calls in each sample (each awaited before the next).
    per_round_s: the samples in round order, aligned across the cases timed together.
  """

  median_s: float
  min_s: float
  q25_s: float
  q75_s: float
  samples: int
  calls_per_sample: int
  per_round_s: tuple[float, ...] = dataclasses.field(repr=False)

  def to_json(self) -> dict[str, float | int]:
    """The statistics, without the raw samples."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k != "per_round_s"}


def compile_timed(fn: Callable[..., Any], *args: Any) -> tuple[jax.stages.Compiled, float]:
  """Returns `jax.jit(fn)` compiled for `args`, and the seconds tracing and compiling took."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def _seconds(call: Call, times: int) -> float:
  # On CPU each call is awaited, as the client may run independent executions side by side; an
  # accelerator runs them in order on one stream, so only the last is awaited, and the host's
  # dispatch of the next overlaps the device's work as in a training loop.
  each = jax.default_backend() == "cpu"
  start = time.perf_counter()
  result = None
  for _ in range(times):
    result = call()
    if each:
      jax.block_until_ready(result)
  jax.block_until_ready(result)
  return time.perf_counter() - start


def interleaved(calls: Mapping[Key, Call], budget: Budget) -> dict[Key, Timing]:
  """Times `calls` in rounds; each round runs every call once, in an order that rotates.

  Interleaving spreads the machine's drift (other processes, clock changes) evenly over the
  calls, so their ratios hold even when absolute times wander. The number of rounds adapts so
  the group takes about `budget.target_s` per call, within the sample bounds.

  Args:
    calls: name -> a call with no arguments returning JAX arrays (compiled, with bound inputs).
    budget: the time and sample bounds.

  Returns:
    name -> its `Timing`.
  """
  names = list(calls)
  # Warm-up (first-call allocations, caches, page faults), which estimates a slow call's time;
  # a fast call's estimate is the best of three more calls.
  estimate = {name: _seconds(calls[name], 1) for name in names}
  for name in names:
    if estimate[name] < 0.1:
      estimate[name] = min(_seconds(calls[name], 1) for _ in range(3))
  inner = {
    name: max(1, math.ceil(budget.min_sample_s / max(estimate[name], 1e-9))) for name in names
  }
  round_s = sum(estimate[name] * inner[name] for name in names)
  rounds = int(budget.target_s * len(names) / max(round_s, 1e-9))
  rounds = min(max(rounds, budget.min_samples), budget.max_samples)
  samples: dict[Key, list[float]] = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      samples[name].append(_seconds(calls[name], inner[name]) / inner[name])
  timings = {}
  for name, values in samples.items():
    q25, _, q75 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    timings[name] = Timing(
      median_s=statistics.median(values),
      min_s=min(values),
      q25_s=q25,
      q75_s=q75,
      samples=len(values),
      calls_per_sample=inner[name],
      per_round_s=tuple(values),
    )
  return timings


def median_ratio(a: Timing, b: Timing) -> float:
  """The median over rounds of a's time / b's time: drift common to a round cancels."""
  return statistics.median(x / y for x, y in zip(a.per_round_s, b.per_round_s, strict=True))


def timed_against(
  calls: Mapping[Key, Call], budget: Budget, baseline: Key, ratio_key: str
) -> dict[Key, dict[str, Any]]:
  """Times `calls` interleaved and gives each its record fields, with a ratio to `baseline`.

  Args:
    calls: name -> a call with no arguments returning JAX arrays (compiled, with bound inputs).
    budget: the time and sample bounds.
    baseline: the name every ratio divides by; the ratios are None when it is not in `calls`.
    ratio_key: the field the ratio goes under, e.g. "time_vs_relu".

  Returns:
    name -> {"timing": its statistics, "ms": its median in ms, ratio_key: `median_ratio` of it
    to the baseline, or None}.
  """
  timings = interleaved(calls, budget)
  base = timings.get(baseline)
  return {
    name: {
      "timing": t.to_json(),
      "ms": t.median_s * 1e3,
      ratio_key: None if base is None else median_ratio(t, base),
    }
    for name, t in timings.items()
  }


# Copy: the memory-bound limit.


def xor_runtime_zero(x: jax.Array, zero: jax.Array) -> jax.Array:
  """A copy of `x` that XLA cannot elide: its bits XORed with a zero known only at run time."""
  bits = jax.lax.bitcast_convert_type(x, zero.dtype)
  return jax.lax.bitcast_convert_type(bits ^ zero, x.dtype)


def copy_calls(x: jax.Array) -> dict[str, tuple[Call, float]]:
  """Two device-to-device copies of `x` that XLA cannot elide, with their compile seconds.

  "jnp.copy" is XLA's copy instruction. "x ^ 0" XORs the bit pattern of `x` with a zero that is a
  runtime argument, so XLA must emit a loop fusion that reads and writes every element, with no
  conversion (bfloat16 arithmetic would go through float32). The faster of the two is the
  memory-bound limit: on CPU, XLA's copy instruction wins on small arrays, where a loop fusion
  pays for splitting work over threads, and can lose on large ones.

  Args:
    x: the array to copy, of a 2- or 4-byte dtype.

  Returns:
    "jnp.copy" and "x ^ 0" -> (a call with no arguments, compile seconds).

  Raises:
    AssertionError: if a copy returns the input's buffer or other values.
  """
  zero = jnp.zeros((), {2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize])
  variants = {"jnp.copy": (jnp.copy, (x,)), "x ^ 0": (xor_runtime_zero, (x, zero))}
  calls = {}
  for name, (fn, args) in variants.items():
    compiled, compile_s = compile_timed(fn, *args)
    y = compiled(*args)
    assert y.unsafe_buffer_pointer() != x.unsafe_buffer_pointer(), f"{name} did not copy"
    assert np.array_equal(np.asarray(y), np.asarray(x)), f"{name} changed the values"
    calls[name] = (bind(compiled, *args), compile_s)
  return calls


def bind(compiled: jax.stages.Compiled, *args: Any) -> Call:
  """A call with no arguments that runs `compiled(*args)`."""
  return lambda: compiled(*args)


def stream_bytes(size: int, dtype: jnp.dtype) -> int:
  """Bytes one read and one write of `size` elements of `dtype` move."""
  return 2 * size * jnp.dtype(dtype).itemsize


# Allocator.


def keep_freed_memory() -> str | None:
  """Makes glibc keep freed memory for reuse instead of returning it to the kernel.

  By default glibc serves allocations over 32 MiB with fresh `mmap`s and unmaps them on free, so
  every call on arrays of 64 MiB and more page-faults its whole output in again: on the 2-core VM
  this was written on, every op, copy included, then streamed at about 1 GB/s instead of 5-25.
  One arena, no mmap and no trimming make XLA's buffers come from a heap that stays mapped, as
  with a caching allocator. A no-op where glibc's `mallopt` is missing.

  Returns:
    A description of the settings made, or None if none were.
  """
  name = ctypes.util.find_library("c")
  mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
  if mallopt is None:
    return None
  settings = {"M_ARENA_MAX": (-8, 1), "M_MMAP_MAX": (-4, 0), "M_TRIM_THRESHOLD": (-1, 2**31 - 1)}
  done = [f"{key}={value}" for key, (param, value) in settings.items() if mallopt(param, value)]
  return f"glibc mallopt({', '.join(done)})" if done else None
