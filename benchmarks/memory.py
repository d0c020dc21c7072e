"""Section 4: the compiled memory of a deep MLP's training step per activation, and its time.

The step is one SGD update on the gradient of an MSE loss, for a stack of `layers` dense layers of
`width` units, each followed by the activation, at a batch of `batch_size`. What the backward
keeps of each activation's forward is what its temp bytes measure: ReLU keeps a layer's output,
`jax.nn.mish` several float32 intermediates per layer. `jax.checkpoint` around Mish keeps only the
input and recomputes the rest in the backward; the step time weighs that recomputation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import mish_jax
from benchmarks import timing

REMAT = "jax.checkpoint(mish)"
# name -> the activation; the first is the baseline of the ratios.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "relu": mish_jax.get_activation("relu"),
  "swish": mish_jax.get_activation("swish"),
  "jax_mish": mish_jax.get_activation("jax_mish"),
  "mish": mish_jax.get_activation("mish"),
  REMAT: jax.checkpoint(mish_jax.get_activation("mish")),
}
BASELINE = "relu"
LEARNING_RATE = 1e-2

Params = list[tuple[jax.Array, jax.Array]]


def _step(activation: Callable[[jax.Array], jax.Array]) -> Callable[..., Params]:
  def loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
    for w, b in params:
      x = activation(x @ w + b)
    return jnp.mean((x - y) ** 2)

  def step(params: Params, x: jax.Array, y: jax.Array) -> Params:
    grads = jax.grad(loss)(params, x, y)
    return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads)

  return step


def memory_stats(compiled: jax.stages.Compiled) -> dict[str, int]:
  """Every `*_in_bytes` field of `compiled.memory_analysis()` (empty if the backend has none)."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  return {name: int(getattr(stats, name)) for name in dir(stats) if name.endswith("_in_bytes")}


class Memory:
  """The memory section: one compile-and-analyse case per activation, then the timing.

  Args:
    layers: dense layers, each followed by the activation.
    width: units per layer (and the input and target width).
    batch_size: rows per step.
    budget: the timing budget of each activation.
    activations: keys of `ACTIVATIONS`.
  """

  def __init__(
    self,
    layers: int,
    width: int,
    batch_size: int,
    budget: timing.Budget,
    activations: Sequence[str] = tuple(ACTIVATIONS),
  ):
    self.layers = layers
    self.width = width
    self.batch_size = batch_size
    self.budget = budget
    self.activations = tuple(activations)
    self.calls: dict[str, timing.Call] = {}
    self.records: dict[str, dict[str, Any]] = {}

  def _inputs(self) -> tuple[Params, jax.Array, jax.Array]:
    keys = jax.random.split(jax.random.key(0), self.layers + 2)
    scale = 1 / np.sqrt(self.width)
    params = [
      (scale * jax.random.normal(key, (self.width, self.width)), jnp.zeros(self.width))
      for key in keys[: self.layers]
    ]
    x = jax.random.normal(keys[-2], (self.batch_size, self.width))
    y = jax.random.normal(keys[-1], (self.batch_size, self.width))
    return params, x, y

  def cases(self) -> list[timing.Case]:
    """A compile case per activation, then one case timing them all, interleaved."""
    cases = [
      timing.Case(f"memory compile {name}", self._compile(name)) for name in self.activations
    ]
    return cases + [timing.Case("memory steps, interleaved", self._time)]

  def _compile(self, name: str) -> Callable[[], None]:
    def run() -> None:
      params, x, y = self._inputs()
      compiled, compile_s = timing.compile_timed(_step(ACTIVATIONS[name]), params, x, y)
      updated = compiled(params, x, y)
      stats = memory_stats(compiled)
      self.calls[name] = timing.bind(compiled, params, x, y)
      self.records[name] = {
        "activation": name,
        "compile_s": compile_s,
        "memory": stats,
        "temp_mib": stats.get("temp_size_in_bytes", 0) / 2**20,
        "check": {"ok": all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(updated))},
      }

    return run

  def _time(self) -> None:
    timed = timing.timed_against(self.calls, self.budget, BASELINE, "time_vs_relu")
    for name, fields in timed.items():
      self.records[name] |= fields
    self.calls.clear()  # Frees the executables and their inputs.

  def results(self) -> dict[str, Any]:
    """The section's JSON: the MLP, and a record per activation."""
    baseline = self.records.get(BASELINE, {}).get("temp_mib")
    for record in self.records.values():
      record["temp_vs_relu"] = record["temp_mib"] / baseline if baseline else None
    return {
      "model": f"MLP, {self.layers} dense layers of {self.width}, each followed by the activation",
      "step": f"SGD (learning rate {LEARNING_RATE}) on the gradient of an MSE loss",
      "layers": self.layers,
      "width": self.width,
      "batch_size": self.batch_size,
      "activation_mib_per_layer": self.batch_size * self.width * 4 / 2**20,
      "baseline": BASELINE,
      "records": [
        self.records.get(name, {"activation": name, "skipped": "failed: see errors"})
        for name in self.activations
      ],
    }
