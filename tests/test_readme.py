"""The README's Flax example runs, and its commands are the ones CI runs."""

import re
from pathlib import Path

import numpy as np

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_flax_example_trains_one_step():
  (code,) = re.findall(r"```python\n(.*?)```", README, re.S)
  namespace = {}
  exec(compile(code, "README.md", "exec"), namespace)
  assert np.isfinite(
    float(namespace["train_step"](*(namespace[k] for k in ("model", "optimizer", "x", "labels"))))
  )


def test_ci_runs_the_readme_test_command():
  ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
  test_command = next(line for line in README.splitlines() if line.endswith("python -m pytest"))
  assert test_command in ci.splitlines()
