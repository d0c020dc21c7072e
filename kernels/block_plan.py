"""How the elementwise kernels cut an array into blocks, and how many persistent CTAs run them.

Hopper's limits set the grid: every CTA of it resident at once, by shared memory and registers
(`benchmarks/sass.py` checks ptxas's figures against these).
"""

from __future__ import annotations

import dataclasses

import jax

# One element per thread of a warpgroup: the granule of every block, and 256 bytes or more, a
# multiple of the 16 bytes a bulk TMA copy moves at a time.
LANES = 128

# Hopper (H100/H200): 132 SMs, 228 KiB of shared memory per SM, at most 227 KiB per CTA, of which
# we leave 1 KiB for the barriers; at most 16 warpgroups per SM.
_H100_NUM_SMS = 132
_SMEM_BYTES_PER_SM = 228 * 1024
MAX_SMEM_BYTES_PER_CTA = 226 * 1024
_MAX_CTAS_PER_SM = 16
# Registers: 64K per SM. ptxas gives the kernel at most 119 a thread (benchmarks/sass.py, which
# fails past this budget), so 4 CTAs of one warpgroup fit by registers.
_REGISTERS_PER_SM = 65536
REGISTERS_PER_THREAD = 128
_CTAS_BY_REGISTERS = _REGISTERS_PER_SM // (REGISTERS_PER_THREAD * LANES)


@dataclasses.dataclass(frozen=True)
class BlockPlan:
  """How `size` elements split into blocks: full, one partial, and a padded tail.

  Block indices run over the full blocks, then the partial block (if any), then the tail (if any).
  """

  size: int
  block_size: int

  @property
  def num_full_blocks(self) -> int:
    return self.size // self.block_size

  @property
  def partial_size(self) -> int:
    """Elements of the partial block: a multiple of `LANES`, less than `block_size`."""
    return (self.size % self.block_size) // LANES * LANES

  @property
  def main_size(self) -> int:
    """Elements copied straight from the operands: all but the tail."""
    return self.size // LANES * LANES

  @property
  def tail_size(self) -> int:
    """The last `size % LANES` elements, which go through a padded `LANES`-element operand."""
    return self.size % LANES

  @property
  def num_blocks(self) -> int:
    return self.num_full_blocks + bool(self.partial_size) + bool(self.tail_size)

  def windows(self) -> list[tuple[int, int, int, int, bool]]:
    """`(first_block, num_blocks, start, length, is_tail)` for each kind of block, in order.

    Block `b` of a kind starts at element `start + (b - first_block) * length` of the flat
    operands, or at element 0 of the padded tail operands if `is_tail`.
    """
    windows = []
    if self.num_full_blocks:
      windows.append((0, self.num_full_blocks, 0, self.block_size, False))
    if self.partial_size:
      start = self.num_full_blocks * self.block_size
      windows.append((self.num_full_blocks, 1, start, self.partial_size, False))
    if self.tail_size:
      windows.append((self.num_blocks - 1, 1, 0, LANES, True))
    return windows


def num_sms() -> int:
  """The SMs of the device a kernel is traced for; an H100's when it is not a GPU."""
  # A CPU mesh's abstract device (under shard_map, say) knows no cores: then ask the devices.
  device = jax.sharding.get_abstract_mesh().abstract_device
  if device is not None and device.platform == "gpu" and device.num_cores:
    return device.num_cores
  device = jax.devices()[0]
  return device.core_count if device.platform == "gpu" else _H100_NUM_SMS


def grid_ctas(requested: int | None, plan: BlockPlan, smem_bytes: int) -> int:
  """The persistent grid: `requested`, or as many CTAs as fit on the SMs at once; never more
  than the blocks."""
  if requested is not None:
    return min(requested, plan.num_blocks)
  by_smem = _SMEM_BYTES_PER_SM // (smem_bytes + 1024)
  ctas_per_sm = max(1, min(_MAX_CTAS_PER_SM, _CTAS_BY_REGISTERS, by_smem))
  return min(num_sms() * ctas_per_sm, plan.num_blocks)
