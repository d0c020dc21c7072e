"""What ptxas and Mosaic GPU's dumps say about a compiled kernel, checked against Hopper's limits.

`benchmarks/sass.py` compiles the kernels; this reads ptxas's report (registers, spills, target)
and the launch in the MLIR dump (grid, block, dynamic shared memory), works out the occupancy,
and names every limit a kernel passes (`problems`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Hopper (compute capability 9.0), from the CUDA C++ Programming Guide and the H100 datasheet.
ARCH = "sm_90a"
NUM_SMS = 132
SMEM_PER_BLOCK_OPTIN = 232_448
SMEM_PER_SM = 233_472
SMEM_RESERVED_PER_BLOCK = 1024
SMEM_GRANULE = 128
REGISTERS_PER_SM = 65_536
REGISTER_GRANULE_PER_WARP = 256
THREADS_PER_SM = 2048
THREADS_PER_BLOCK = 1024
CTAS_PER_SM = 32
GRID_LIMITS = (2**31 - 1, 65_535, 65_535)
WARP = 32


def parse_ptxas(text: str) -> dict[str, Any]:
  """The figures of ptxas -v's report on one kernel: its name, target, registers and spills."""
  entry = re.search(r"Compiling entry function '([^']+)' for '([^']+)'", text)
  usage = re.search(r"Used (\d+) registers", text)
  frame = re.search(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text
  )
  if not (entry and usage and frame):
    raise ValueError(f"not a ptxas -v report of one kernel: {text[:200]!r}")
  barriers = re.search(r"used (\d+) barriers", text)
  static_smem = re.search(r"(\d+) bytes smem", text)
  return dict(
    kernel=entry.group(1),
    arch=entry.group(2),
    registers=int(usage.group(1)),
    stack_frame=int(frame.group(1)),
    spill_stores=int(frame.group(2)),
    spill_loads=int(frame.group(3)),
    barriers=int(barriers.group(1)) if barriers else 0,
    static_smem=int(static_smem.group(1)) if static_smem else 0,
  )


_LAUNCH = re.compile(
  r"gpu\.launch .*?blocks\([^)]*\) in \(([^)]*)\) threads\([^)]*\) in \(([^)]*)\)"
  r"(?: dynamic_shared_memory_size (%[\w.]+))?"
)
_CONSTANT = re.compile(r"(%[\w.]+) = arith\.constant (-?\d+)")


def parse_launch(lines: Iterable[str]) -> dict[str, Any]:
  """The grid, block and dynamic shared memory of the first `gpu.launch` in Mosaic GPU's MLIR.

  Its operands are SSA values; each is resolved to the `arith.constant` that defines it.
  """
  constants: dict[str, int] = {}
  for line in lines:
    for name, value in _CONSTANT.findall(line):
      constants[name] = int(value)
    if launch := _LAUNCH.search(line):
      grid_text, block_text, smem = launch.groups()

      def values(operands: str) -> list[int]:
        return [constants[part.split("=")[1].strip()] for part in operands.split(",")]

      return dict(
        grid=values(grid_text), block=values(block_text), smem=constants[smem] if smem else 0
      )
  raise ValueError("no gpu.launch with constant bounds in the MLIR")


def occupancy(registers: int, threads: int, smem: int) -> dict[str, int]:
  """CTAs per SM by each limit (registers, shared memory, threads, Hopper's 32) and overall."""
  warps = math.ceil(threads / WARP)
  registers_per_warp = math.ceil(registers * WARP / REGISTER_GRANULE_PER_WARP)
  by_registers = REGISTERS_PER_SM // (registers_per_warp * REGISTER_GRANULE_PER_WARP) // warps
  smem_per_cta = math.ceil(smem / SMEM_GRANULE) * SMEM_GRANULE + SMEM_RESERVED_PER_BLOCK
  limits = dict(
    registers=by_registers,
    smem=SMEM_PER_SM // smem_per_cta,
    threads=THREADS_PER_SM // (warps * WARP),
    hardware=CTAS_PER_SM,
  )
  ctas = min(limits.values())
  limiting = [name for name, value in limits.items() if value == ctas]
  return dict(
    ctas_per_sm=ctas, limited_by="+".join(limiting), **{f"by_{k}": v for k, v in limits.items()}
  )


def mish_registers_budget() -> int:
  """The registers a thread that the elementwise kernels' grid sizing assumes."""
  from mish_jax.kernels import block_plan

  return block_plan.REGISTERS_PER_THREAD


def problems(record: Mapping[str, Any]) -> list[str]:
  """What keeps one compiled kernel off an H100: each a sentence; empty when it launches clean."""
  found = []
  if record["arch"] != ARCH:
    found.append(f"compiled for {record['arch']}, not {ARCH}")
  if record["spill_stores"] or record["spill_loads"]:
    found.append(
      f"spills {record['spill_stores']} bytes (stores) / {record['spill_loads']} (loads)"
      f" at {record['registers']} registers"
    )
  smem = record["smem"] + record["static_smem"]
  if smem > SMEM_PER_BLOCK_OPTIN:
    found.append(f"{smem} bytes of shared memory, more than {SMEM_PER_BLOCK_OPTIN}")
  for axis, size, limit in zip("xyz", record["grid"], GRID_LIMITS, strict=True):
    if not 1 <= size <= limit:
      found.append(f"grid {axis} = {size}, outside CUDA's [1, {limit}]")
  if (threads := math.prod(record["block"])) > THREADS_PER_BLOCK:
    found.append(f"{threads} threads a block, more than {THREADS_PER_BLOCK}")
  if record["ctas_per_sm"] < 1:
    found.append("no CTA fits on an SM")
  # The elementwise kernels are persistent: their grid assumes every CTA resident at once.
  if record["kernel"].startswith("mish_"):
    if record["registers"] > mish_registers_budget():
      found.append(f"{record['registers']} registers, past the {mish_registers_budget()} budgeted")
    if record["grid"][0] > NUM_SMS * record["ctas_per_sm"]:
      found.append(
        f"{record['grid'][0]} CTAs, more than the {NUM_SMS} x {record['ctas_per_sm']} resident"
      )
  return found


def read_dump(folder: Path) -> list[dict[str, Any]]:
  """Every kernel Mosaic GPU dumped into `folder`: ptxas's figures, the launch, the occupancy."""
  records = []
  for report in sorted(folder.glob("*.ptxas")):
    record = parse_ptxas(report.read_text())
    with open(report.with_suffix(".mlir-passes.log")) as mlir:
      record.update(parse_launch(mlir))
    record.update(occupancy(record["registers"], math.prod(record["block"]), record["smem"]))
    records.append(record)
  return records
