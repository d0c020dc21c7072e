"""Every shipped kernel compiled to sm_90a machine code on a CPU, checked against Hopper's limits.

The compile check needs JAX's CUDA plugin and ptxas (`benchmarks/sass.py`'s docstring says how to
install them, off the environment's path, into a folder named by `MISH_JAX_CUDA_SITE`). Without
them it skips, unless `MISH_JAX_REQUIRE_SASS=1`, as CI sets it: then a missing plugin fails.
The parsers and the occupancy arithmetic are tested on their own, always.
"""

from __future__ import annotations

import os

import pytest

from benchmarks import ptxas_report, sass

PTXAS_REPORT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'mish_forward_mosaic_gpu_kernel' for 'sm_90a'
ptxas info    : Function properties for mish_forward_mosaic_gpu_kernel
    0 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 119 registers, used 2 barriers, 1 bytes smem
ptxas info    : Compile time = 63.316 ms
"""

LAUNCH_MLIR = """\
    %c1_2 = arith.constant 1 : index
    %c128 = arith.constant 128 : index
    %c264 = arith.constant 264 : index
    %c1 = arith.constant 1 : index
    %c81944_i32 = arith.constant 81944 : i32
    %c7 = arith.constant 7 : index
    %25 = gpu.launch async [%0] blocks(%arg2, %arg3, %arg4) in (%arg8 = %c264, %arg9 = %c7, \
%arg10 = %c1) threads(%arg5, %arg6, %arg7) in (%arg11 = %c128, %arg12 = %c1, %arg13 = %c1_2) \
dynamic_shared_memory_size %c81944_i32 {
    %c99 = arith.constant 99 : index
    %26 = gpu.launch async [%0] blocks(%a, %b, %c) in (%d = %c99, %e = %c1, %f = %c1) threads(\
%g, %h, %i) in (%j = %c99, %k = %c1, %l = %c1) {
"""


def _record(**changes):
  record = dict(
    kernel="k", arch="sm_90a", registers=128, stack_frame=0, spill_stores=0, spill_loads=0,
    barriers=1, static_smem=0, grid=[132, 1, 1], block=[128, 1, 1], smem=80 * 1024,
  )  # fmt: skip
  record.update(changes)
  record.update(ptxas_report.occupancy(record["registers"], 128, record["smem"]))
  return record


def test_parse_ptxas():
  assert ptxas_report.parse_ptxas(PTXAS_REPORT) == dict(
    kernel="mish_forward_mosaic_gpu_kernel", arch="sm_90a", registers=119, stack_frame=0,
    spill_stores=8, spill_loads=12, barriers=2, static_smem=1,
  )  # fmt: skip
  with pytest.raises(ValueError, match="not a ptxas"):
    ptxas_report.parse_ptxas("ptxas info    : 0 bytes gmem\n")


def test_parse_launch_resolves_constants_of_the_first_launch():
  launch = ptxas_report.parse_launch(LAUNCH_MLIR.splitlines())
  assert launch == dict(grid=[264, 7, 1], block=[128, 1, 1], smem=81944)
  with pytest.raises(ValueError, match="no gpu.launch"):
    ptxas_report.parse_launch(["%c1 = arith.constant 1 : index"])


@pytest.mark.parametrize(
  "registers, threads, smem, expected",
  [
    # 119 registers: 15 x 256 a warp, 17 warps by registers, 4 CTAs of 4 warps; 80 KiB + 24 B of
    # shared memory round to 82048 B, plus 1 KiB reserved: 2 CTAs in 228 KiB.
    (119, 128, 81944, dict(ctas_per_sm=2, limited_by="smem", by_registers=4, by_smem=2)),
    # 255 registers: 8192 a warp, 8 warps, 2 CTAs; no shared memory to speak of.
    (255, 128, 0, dict(ctas_per_sm=2, limited_by="registers", by_registers=2, by_smem=228)),
    # 32 registers, 1024 threads: 2 CTAs by threads and by registers (32 warps x 1024 each).
    (32, 1024, 0, dict(ctas_per_sm=2, limited_by="registers+threads", by_threads=2)),
    # Tiny CTAs: Hopper holds at most 32 a SM.
    (16, 32, 0, dict(ctas_per_sm=32, limited_by="hardware", by_threads=64)),
  ],
)
def test_occupancy(registers, threads, smem, expected):
  result = ptxas_report.occupancy(registers, threads, smem)
  assert {key: result[key] for key in expected} == expected


@pytest.mark.parametrize(
  "changes, message",
  [
    (dict(arch="sm_90"), "compiled for sm_90, not sm_90a"),
    (dict(spill_stores=4), "spills 4 bytes"),
    (dict(spill_loads=4), "spills 0 bytes"),
    (dict(smem=232_449), "shared memory, more than 232448"),
    (dict(grid=[1, 131_072, 1]), "grid y = 131072"),
    (dict(grid=[1, 1, 65_536]), "grid z = 65536"),
    (dict(grid=[0, 1, 1]), "grid x = 0"),
    (dict(block=[2048, 1, 1]), "2048 threads a block"),
    (dict(kernel="mish_forward_kernel", registers=136), "136 registers, past the 128"),
    # 2 CTAs an SM (80 KiB of shared memory each): 264 resident, not 265.
    (dict(kernel="mish_forward_kernel", grid=[265, 1, 1]), "265 CTAs, more than the 132 x 2"),
  ],
)
def test_problems_name_each_limit(changes, message):
  assert ptxas_report.problems(_record()) == []
  found = ptxas_report.problems(_record(**changes))
  assert any(message in problem for problem in found), found


def test_cases_cover_every_kernel_and_dtype():
  names = [case.name for case in sass.cases()]
  assert len(names) == len(set(names))
  for kernel in ("mish_forward", "mish_backward", "mish_derivative"):
    for dtype in ("float32", "bfloat16", "float16"):
      assert f"{kernel} {dtype} 2^24" in names
    assert f"{kernel} bfloat16 2^33" in names
  for kernel in ("linear_mish", "linear_mish_save_z"):
    for dtype in ("float32", "bfloat16", "float16"):
      assert f"{kernel} {dtype} 4096x4096x4096" in names
    assert f"{kernel} bfloat16 16777216x128x128" in names
    assert f"{kernel} bfloat16 4096x4096x4096 float32 out" in names
  assert any("num_stages" in name for name in names)  # The sweep's configs.
  assert any("tile_m=64" in name for name in names)


@pytest.fixture(scope="module")
def compiled():
  names = [case.name for case in sass.cases()]
  try:
    _, results = sass.compile_cases(names, os.environ.get(sass.SITE_ENV), os.cpu_count() or 1)
  except sass.Unavailable as err:
    if os.environ.get("MISH_JAX_REQUIRE_SASS") == "1":
      pytest.fail(f"MISH_JAX_REQUIRE_SASS=1, but the compile check cannot run: {err}")
    pytest.skip(f"no CUDA plugin or ptxas: {err}")
  return results


@pytest.mark.parametrize("name", [case.name for case in sass.cases()])
def test_kernel_compiles_within_hopper_limits(compiled, name):
  assert sass.failures(compiled[name]) == []


def _only_kernel(compiled, name):
  (record,) = compiled[name]["kernels"]
  return record


def test_float32_save_z_has_register_headroom(compiled):
  assert _only_kernel(compiled, "linear_mish_save_z float32 4096x4096x4096")["registers"] <= 240


@pytest.mark.parametrize("kernel", ["linear_mish", "linear_mish_save_z"])
def test_bfloat16_with_a_float32_bias_runs_the_bfloat16_matmul(compiled, kernel):
  """The bfloat16 kernel's shared memory, but for a float32 output tile."""
  mixed = _only_kernel(compiled, f"{kernel} bfloat16 4096x4096x4096 float32 out")
  bf16 = _only_kernel(compiled, f"{kernel} bfloat16 4096x4096x4096")
  # One 128 x 128 output tile (save_z stores z from it, then Mish's y).
  assert mixed["smem"] - bf16["smem"] == 128 * 128 * 2
