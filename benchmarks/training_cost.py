"""Section 3: the MNIST CNN's train step (forward, backward, Adam update) per activation.

The model and the step are the experiments' own (`experiments.train.build_model` and
`experiments.train.train_step`), on one batch of random 28x28x1 images. The step is jitted as a
pure function of the model and optimizer state, so its compile time is measured apart and no
Python graph bookkeeping sits in the timed call. Activations are interleaved over the rounds and
each ratio is the median over rounds of (step time / ReLU's step time in that round).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

import mish_jax
from benchmarks import timing

ACTIVATIONS = ("relu", "swish", "jax_mish", "mish", "mish_pallas")
BASELINE = "relu"
INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


class TrainingCost:
  """The training-cost section: one compile case per activation, then the interleaved timing.

  Args:
    batch_size: images per step.
    budget: the timing budget of each activation.
    model_options: keyword arguments for `experiments.models.cnn` ({} for the MNIST CNN).
    activations: names from `mish_jax.ACTIVATIONS`; the first is the baseline of the ratios.
  """

  def __init__(
    self,
    batch_size: int,
    budget: timing.Budget,
    model_options: Mapping[str, Any],
    activations: Sequence[str] = ACTIVATIONS,
  ):
    self.batch_size = batch_size
    self.budget = budget
    self.model_options = dict(model_options)
    self.activations = tuple(activations)
    # Interpreted Pallas runs the kernel body in Python-level loops: far too slow to time.
    self.skipped = {
      name: f"interpret mode on {jax.default_backend()}: too slow to time"
      for name in self.activations
      if name == "mish_pallas" and not mish_jax.pallas_compiles()
    }
    self.calls: dict[str, timing.Call] = {}
    self.records: dict[str, dict[str, Any]] = {}

  def cases(self) -> list[timing.Case]:
    """A compile case per timed activation, then one case timing them all, interleaved."""
    timed = [name for name in self.activations if name not in self.skipped]
    cases = [timing.Case(f"training compile {name}", self._compile(name)) for name in timed]
    return cases + [timing.Case("training steps, interleaved", self._time)]

  def _compile(self, name: str) -> Callable[[], None]:
    def run() -> None:
      # Lazy: the experiments pull in Orbax and SciPy, which the other sections do not need.
      from experiments import models, train

      config = train.Config(activation=name, model="cnn", model_options=self.model_options)
      model = train.build_model(config, INPUT_SHAPE, NUM_CLASSES)
      optimizer = nnx.Optimizer(model, optax.adam(config.learning_rate), wrt=nnx.Param)
      graphdef, state = nnx.split((model, optimizer))
      images_key, labels_key = jax.random.split(jax.random.key(0))
      images = jax.random.uniform(images_key, (self.batch_size, *INPUT_SHAPE))
      labels = jax.random.randint(labels_key, (self.batch_size,), 0, NUM_CLASSES)

      def step(state: Any, images: jax.Array, labels: jax.Array) -> tuple[Any, jax.Array]:
        model, optimizer = nnx.merge(graphdef, state)
        loss, _ = train.train_step(model, optimizer, images, labels)
        return nnx.state((model, optimizer)), loss

      compiled, compile_s = timing.compile_timed(step, state, images, labels)
      _, loss = compiled(state, images, labels)
      self.calls[name] = timing.bind(compiled, state, images, labels)
      self.records[name] = {
        "activation": name,
        "compile_s": compile_s,
        "parameters": models.count_params(model)[0],
        "first_loss": float(loss),
        # The loss of random labels starts near log(10); anything else is a broken step.
        "check": {"ok": bool(np.isfinite(float(loss)) and abs(float(loss) - math.log(10)) < 2)},
      }

    return run

  def _time(self) -> None:
    timed = timing.timed_against(self.calls, self.budget, BASELINE, "ratio_vs_relu")
    for name, fields in timed.items():
      self.records[name] |= fields
    self.calls.clear()  # Frees the executables and their inputs.

  def results(self) -> dict[str, Any]:
    """The section's JSON: settings, and a record per activation (skipped ones with a reason)."""
    return {
      "model": "experiments.train.build_model(Config(model='cnn', model_options=...))",
      "model_options": {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in self.model_options.items()
      },
      "step": "experiments.train.train_step: forward, backward, Adam update",
      "batch_size": self.batch_size,
      "input_shape": list(INPUT_SHAPE),
      "baseline": BASELINE,
      "ratio": "median over interleaved rounds of step time / ReLU's step time",
      "records": [
        self.records.get(name)
        or {"activation": name, "skipped": self.skipped.get(name, "failed: see errors")}
        for name in self.activations
      ],
    }
