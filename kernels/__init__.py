"""Pallas kernels for Mish, installed as `mish_jax.kernels`.

Submodules, imported on demand (they import Pallas):

* `mish_jax.kernels.mish`: the elementwise forward and backward kernels, `mish(x, ...)`.
* `mish_jax.kernels.linear_mish`: the fused `mish(x @ kernel + bias)`, `linear_mish(...)`.
* `mish_jax.kernels.common`: what both share: dtypes, the `interpret=` switch, the Mish math.

This package imports only JAX, never the rest of `mish_jax`.
"""
