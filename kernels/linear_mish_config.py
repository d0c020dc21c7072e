"""The fused kernel's tiles: `TuningConfig`, its limits, and the defaults per dtype."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax.experimental import pallas as pl

# Shared memory per SM of an H100 or H200, the most one program may allocate.
SMEM_BYTES = 227 * 1024
# The widest swizzle: a 128-byte row of a tile is spread over all 32 shared-memory banks.
SWIZZLE_BYTES = 128
_WARPGROUP_THREADS = 128
_MAX_ACCUMULATOR_REGISTERS = 128


@dataclasses.dataclass(frozen=True)
class TuningConfig:
  """The tiles of one kernel launch.

  Attributes:
    tile_m: rows of x per output tile, a multiple of 64 (wgmma's M) up to 256 (TMA's limit).
    tile_n: columns of the weight per output tile; 128 bytes of its dtype or a multiple, <= 256.
    tile_k: the K step; 128 bytes of its dtype (one swizzled row) or a multiple, <= 256.
    max_concurrent_steps: pipeline stages, K steps whose tiles are in shared memory at once.
  """

  tile_m: int
  tile_n: int
  tile_k: int
  max_concurrent_steps: int

  def smem_bytes(self, dtype: jnp.dtype, out_dtype: jnp.dtype | None = None) -> int:
    """Shared memory one program allocates: input slots, the output tile and the bias."""
    itemsize = jnp.dtype(dtype).itemsize
    out_itemsize = jnp.dtype(out_dtype or dtype).itemsize
    inputs = self.max_concurrent_steps * (self.tile_m + self.tile_n) * self.tile_k * itemsize
    return inputs + self.tile_m * self.tile_n * out_itemsize + self.tile_n * 4

  def validate(self, dtype: jnp.dtype, out_dtype: jnp.dtype | None = None) -> None:
    """Raises ValueError for tiles that do not lower for operands of `dtype` (and the output's,
    `out_dtype`, `dtype` when None)."""
    row = SWIZZLE_BYTES // jnp.dtype(dtype).itemsize
    if self.tile_m % 64 or not 0 < self.tile_m <= 256:
      raise ValueError(f"tile_m must be a multiple of 64 in [64, 256], got {self.tile_m}")
    if self.tile_n % row or not 0 < self.tile_n <= 256:
      raise ValueError(f"tile_n must be a multiple of {row} in [{row}, 256], got {self.tile_n}")
    if self.tile_k % row or not 0 < self.tile_k <= 256:
      raise ValueError(f"tile_k must be a multiple of {row} in [{row}, 256], got {self.tile_k}")
    # One stage would refill the slot that the wgmma in flight still reads.
    if self.max_concurrent_steps < 2:
      raise ValueError(f"max_concurrent_steps must be >= 2, got {self.max_concurrent_steps}")
    if (size := self.smem_bytes(dtype, out_dtype)) > SMEM_BYTES:
      raise ValueError(f"{self} needs {size} bytes of shared memory, more than {SMEM_BYTES}")
    # One warpgroup (128 threads) holds the float32 accumulator: tile_m * tile_n / 128 registers a
    # thread. Past 128 of them the epilogue spills (ptxas for sm_90a, bfloat16: 128x192 spills
    # 2.3 KB, 128x256 6.2 KB and 256x128 5.8 KB, each at the 255-register ceiling).
    accumulator = self.tile_m * self.tile_n // _WARPGROUP_THREADS
    if accumulator > _MAX_ACCUMULATOR_REGISTERS:
      raise ValueError(
        f"{self} keeps {accumulator} accumulator registers a thread, more than"
        f" {_MAX_ACCUMULATOR_REGISTERS}: the kernel would spill (tile_m * tile_n <= 16384)"
      )


# 16-bit: 4 stages x (128 + 128) x 64 x 2 B = 128 KiB of input slots, a 32 KiB output tile and
# 512 B of bias: 160.5 KiB of 227 KiB. float32 (tf32): 4 x (128 + 128) x 32 x 4 B = 128 KiB, a
# 64 KiB output tile and the bias: 192.5 KiB. A 128 x 128 float32 accumulator is 128 registers per
# thread of the warpgroup, which leaves room for the Mish epilogue.
_DEFAULT_CONFIGS = {
  2: TuningConfig(tile_m=128, tile_n=128, tile_k=64, max_concurrent_steps=4),
  4: TuningConfig(tile_m=128, tile_n=128, tile_k=32, max_concurrent_steps=4),
}


def default_config(dtype: jnp.dtype, m: int | None = None, n: int | None = None) -> TuningConfig:
  """The default tiles for operands of `dtype`, shrunk to an `(m, n)` output smaller than them."""
  config = _DEFAULT_CONFIGS[jnp.dtype(dtype).itemsize]
  row = SWIZZLE_BYTES // jnp.dtype(dtype).itemsize
  if m is not None:
    config = dataclasses.replace(config, tile_m=min(config.tile_m, round_up(m, 64)))
  if n is not None:
    config = dataclasses.replace(config, tile_n=min(config.tile_n, round_up(n, row)))
  return config


def round_up(size: int, multiple: int) -> int:
  """`size` rounded up to a positive multiple of `multiple`."""
  return max(pl.cdiv(size, multiple), 1) * multiple
