"""Benchmarks of mish-jax against `jax.nn`: `python benchmarks/run.py --help`.

Modules:

* `run`: the command line; runs the sections and writes results.json, report.md and the plots.
* `timing`: compile-then-time helpers, interleaved medians, the copy and matmul baselines.
* `references`: float64 numpy references and the tolerance check.
* `elementwise`, `fused`, `training_cost`, `memory`: the four sections.
* `report`: the Markdown report; `plots`: the PNG plots.
"""
