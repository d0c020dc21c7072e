"""Pallas kernels for Mish, installed as `mish_jax.kernels`.

Submodules, imported on demand (they import Pallas):

* `mish_jax.kernels.mish`: the elementwise forward and backward kernels, `mish(x, ...)`.
* `mish_jax.kernels.linear_mish`: the fused `mish(x @ kernel + bias)`, `linear_mish(...)`.
* `mish_jax.kernels.common`: what both share: dtypes, the `interpret=` switch, the Mish math.
* `mish_jax.kernels.block_plan`, `mish_jax.kernels.linear_mish_config`: the elementwise kernels'
  blocks and grid, the fused kernel's tiles.
* `mish_jax.kernels.rounding`: correct 16-bit rounding, which the XLA path uses too (no Pallas).
* `mish_jax.kernels.jax_compat`: every private JAX name, with a clear error where one is missing.

This package imports only JAX, never the rest of `mish_jax`.
"""
