"""The GPU check's cases and their roofline on paper, for an H100 and an H200.

One source for docs/benchmarks.md (`python benchmarks/gpu_check.py --roofline` prints
`roofline_markdown()`) and for each measured case's "% of roofline" (`case_roofline`). Bytes are
the compulsory traffic, each input read once and each output written once; the dense layer's
bytes and FLOPs are `benchmarks.fused`'s model, the elementwise op's a copy's streams.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from benchmarks import fused, timing
from experiments.report import markdown_table


@dataclasses.dataclass(frozen=True)
class Chip:
  """A GPU's datasheet limits, dense (no sparsity).

  Attributes:
    name: what its JAX device kind contains, e.g. "H100".
    bandwidth: device memory bytes per second.
    matmul_flops: matmul FLOP/s by operand dtype (float32 through tf32 `wgmma`).
    vector_flops: float32 FLOP/s of the CUDA cores, for elementwise math.
  """

  name: str
  bandwidth: float
  matmul_flops: dict[str, float]
  vector_flops: float


_HOPPER_MATMUL = {"bfloat16": 990e12, "float16": 990e12, "float32": 495e12}
CHIPS = (Chip("H100", 3.35e12, _HOPPER_MATMUL, 67e12), Chip("H200", 4.8e12, _HOPPER_MATMUL, 67e12))
DIRECTIONS = ("forward", "forward+backward")
# float32 operations per element of mish_f32, and of it with mish_grad_f32 (exp, division: one).
ELEMENTWISE_OPS = {"forward": 12, "forward+backward": 32}


def elementwise_cost(size: int, dtype: str, direction: str) -> tuple[int, int]:
  """(bytes, FLOPs) of Mish on `size` elements: each input read once, each output written once.

  Forward: x read, y written. Forward+backward: x and the cotangent g read, y and dx written.
  """
  streams = 1 if direction == "forward" else 2
  return streams * timing.stream_bytes(size, dtype), ELEMENTWISE_OPS[direction] * size


def dense_cost(m: int, k: int, n: int, dtype: str, direction: str) -> tuple[int, int]:
  """(bytes, FLOPs) of mish(x @ w + b) for x: (M, K), w: (K, N): the compulsory traffic.

  Forward: x, w, b read, y written; 2MNK FLOPs. Forward+backward: x, w, b, g read, y, dx, dw, db
  written; 6MNK FLOPs (the matmuls only).
  """
  shape = (m, k, n)
  return fused.traffic(shape, direction, dtype), fused.flops(shape, direction)


def case_roofline(kind: str, shape: Sequence[int], dtype: str, direction: str) -> dict[str, Any]:
  """Bytes, FLOPs and, per chip, the bound ("memory" or "compute") and the minimum seconds."""
  if kind == "elementwise":
    num_bytes, flops = elementwise_cost(shape[0], dtype, direction)
  else:
    num_bytes, flops = dense_cost(*shape, dtype, direction)
  chips = {}
  for chip in CHIPS:
    rate = chip.vector_flops if kind == "elementwise" else chip.matmul_flops[dtype]
    memory_s, compute_s = num_bytes / chip.bandwidth, flops / rate
    bound = "memory" if memory_s >= compute_s else "compute"
    chips[chip.name] = {"bound": bound, "min_s": max(memory_s, compute_s)}
  return {"bytes": num_bytes, "flops": flops, "chips": chips}


@dataclasses.dataclass(frozen=True)
class Plan:
  """The cases of one run: elementwise sizes, dense (M, K, N) shapes, the sweep's shapes."""

  sizes: tuple[int, ...]
  dtypes: tuple[str, ...]
  shapes: tuple[tuple[tuple[int, int, int], str], ...]
  sweep_size: int
  sweep_dtypes: tuple[str, ...]
  sweep_shapes: tuple[tuple[int, int, int], ...]
  max_sweep_configs: int


FULL = Plan(
  sizes=(2**20, 2**22, 2**24, 2**26, 2**28),
  dtypes=("float32", "bfloat16"),
  shapes=(
    ((65536, 256, 1024), "bfloat16"),
    ((4096, 4096, 4096), "bfloat16"),
    ((16384, 1024, 4096), "bfloat16"),
    ((8192, 8192, 8192), "bfloat16"),
    ((4000, 1000, 300), "bfloat16"),
    ((65536, 256, 1024), "float32"),
    ((4096, 4096, 4096), "float32"),
  ),
  sweep_size=2**26,
  sweep_dtypes=("float32", "bfloat16"),
  sweep_shapes=((65536, 256, 1024), (4096, 4096, 4096)),
  max_sweep_configs=10,
)
QUICK = dataclasses.replace(
  FULL, sizes=(2**20, 2**24), shapes=FULL.shapes[:2], sweep_size=2**24, max_sweep_configs=4
)
# The GPU interpreter runs every simulated thread in Python: tiny shapes, ragged ones among them.
INTERPRET = Plan(
  sizes=(4096 + 128 + 5,),  # A full block, a partial one and a ragged tail.
  dtypes=("float32", "bfloat16"),
  shapes=(((33, 40, 50), "bfloat16"),),
  sweep_size=4096,
  sweep_dtypes=("bfloat16",),
  sweep_shapes=((64, 64, 128),),
  max_sweep_configs=2,
)


def size_text(size: int) -> str:
  """2^20 for a power of two, else the count with thousands separators."""
  return f"2^{size.bit_length() - 1}" if size & (size - 1) == 0 else f"{size:,}"


def _seconds_text(seconds: float) -> str:
  return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def roofline_markdown(plan: Plan = FULL) -> str:
  """The roofline of every case of `plan` as Markdown tables, those of docs/benchmarks.md."""
  names = [chip.name for chip in CHIPS]
  tables = []
  for kind, cases in (
    ("elementwise", [((size,), dtype) for size in plan.sizes for dtype in plan.dtypes]),
    ("dense", list(plan.shapes)),
  ):
    title = "size" if kind == "elementwise" else "M x K x N"
    heads = [title, "dtype", "direction", "bytes", "FLOPs"] + [
      f"{n}: bound, min time" for n in names
    ]
    rows = []
    for shape, dtype in cases:
      label = size_text(shape[0]) if kind == "elementwise" else " x ".join(map(str, shape))
      for direction in DIRECTIONS:
        r = case_roofline(kind, shape, dtype, direction)
        rows.append(
          [label, dtype, direction, f"{r['bytes'] / 1e6:,.1f} MB", f"{r['flops'] / 1e9:,.2f} G"]
          + [f"{r['chips'][n]['bound']}, {_seconds_text(r['chips'][n]['min_s'])}" for n in names]
        )
    tables.append(markdown_table(heads, rows) + "\n")
  return "\n".join(tables)
