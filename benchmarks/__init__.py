"""Benchmarks of mish-jax against `jax.nn`: `python benchmarks/run.py --help`.

Modules:

* `run`: the command line; runs the sections and writes results.json, report.md and the plots.
* `timing`: compile-then-time helpers, interleaved medians, the copy and matmul baselines.
* `references`: float64 numpy references and the tolerance check.
* `elementwise`, `fused`, `training_cost`, `memory`: the four sections.
* `report`: the Markdown report; `plots`: the PNG plots.

The GPU check, `python benchmarks/gpu_check.py --help`, one call on a lent Hopper GPU:

* `gpu_check`: the command line and the runner (each section in its own process, on a budget).
* `gpu_sections`: the measured sections (elementwise, fused, tuning sweep) and their checks.
* `gpu_results`: results.json, report.md and the figure, rewritten after every case.
* `roofline`: the chips' limits and each case's bytes and FLOPs, the tables in docs/benchmarks.md.

The compile check, `python benchmarks/sass.py --help`, on a CPU:

* `sass`: every kernel compiled to sm_90a machine code; ptxas's registers and spills, each
  launch's grid, block and shared memory, the occupancy, checked against Hopper's limits.
"""
