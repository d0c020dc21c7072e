"""Tests of the elementwise Mosaic GPU Mish kernels, `mish_jax.kernels.mish`.

The base class holds the tests; its `Interpret` subclass runs the kernels themselves (TMA copies,
barriers, the ring of buffers) under Mosaic GPU's interpret mode on the CPU, with the race
detector on and every buffer filled with NaN before the kernel runs, and asserts after each
kernel that no race was found; its `Compiled` subclass compiles them, on Hopper GPUs only.
Because outputs start as NaN, an output without NaN for finite inputs proves that the kernel
wrote every element, the partial block and the tail included.

The lowering tests at the end run the whole Pallas to Mosaic GPU lowering for CUDA on any host.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from mish_jax.kernels import block_plan
from mish_jax.kernels import mish as mish_kernels
from mish_jax.kernels.jax_compat import InterpretGPUParams, interpret_pallas_call

import mish_jax
from mish_jax._src import activations
from tests.kernel_testing import (
  DTYPES,
  assert_lowers_to_mosaic_gpu,
  assert_ulp_close,
  assert_within_condition_bound,
  elementwise_on_buckets,
  mish64,
  mish_grad64,
  mish_second_derivative64,
  random_array,
  random_numpy,
)

# Small blocks over three CTAs: ragged sizes then take partial blocks, tails, CTAs with unequal
# numbers of blocks, and rings that wrap around several times.
SMALL_TUNING = dict(block_size=1024, num_stages=3, num_ctas=3)
# What the interpreter runs by default; too big for a Hopper CTA.
BIG_TUNING = dict(block_size=mish_kernels.INTERPRET_BLOCK_SIZE)
# Every ragged size in every dtype; the 3-D and 4-D shapes (only their size matters to the flat
# kernels) one dtype each: a partial block and a tail, a multiple of 128, a tail only.
CASES = [(shape, dtype) for shape in [(1,), (127,), (129,), (20011,)] for dtype in DTYPES] + [
  ((3, 5, 7, 11), jnp.float32),
  ((2, 3, 4, 128), jnp.bfloat16),
  ((2, 3, 4, 5), jnp.float16),
]
DTYPE_IDS = lambda d: jnp.dtype(d).name  # noqa: E731


def _max_ulp(dtype) -> int:
  return 2 if dtype == jnp.float32 else 1


def _as64(a) -> np.ndarray:
  return np.asarray(a, np.float64)


class MishKernelTestBase:
  """The elementwise Mish kernels, against the XLA implementation and float64."""

  interpret: bool | InterpretGPUParams
  # The interpreter runs the CPU's exp, the XLA path's: then results match it to the ulp.
  exp_as_xla = True
  # float32 roundings allowed against float64, amplified by the condition number.
  float32_ulps = 4

  def assert_no_race(self) -> None:
    """Checks the kernel that ran last (the race detector restarts with every kernel)."""

  def run_kernel(self, kernel, *args, **kwargs):
    out = kernel(*args, interpret=self.interpret, **kwargs)
    jax.block_until_ready(out)
    self.assert_no_race()
    return out

  def check_all_paths(self, x, g, derivative: bool = False, **tuning) -> None:
    """Forward, backward and (if asked) derivative against XLA and float64."""
    dtype = x.dtype
    y = self.run_kernel(mish_kernels.mish_forward, x, **tuning)
    dx = self.run_kernel(mish_kernels.mish_backward, x, g, **tuning)
    slope = self.run_kernel(mish_kernels.mish_derivative, x, **tuning) if derivative else y
    for out in (y, dx, slope):
      assert out.shape == x.shape and out.dtype == dtype
      assert not np.isnan(np.asarray(out, np.float32)).any(), "an output left unwritten"

    self.assert_matches(y, x, "forward")
    self.assert_matches(dx, x, "backward", g)
    if derivative:
      self.assert_matches(slope, x, "derivative")

  def assert_matches(self, actual, x, kind: str, g=None) -> None:
    """`actual` is mish(x), mish'(x) g or mish'(x): against float64 always, XLA if it can be.

    float64 within a bound scaled by the function's condition number; the XLA path to the ulp
    where both run the same exp (`exp_as_xla`).
    """
    x = np.asarray(x)
    x64 = _as64(x)
    slope64 = mish_grad64(x64)
    with np.errstate(invalid="ignore"):  # inf * 0 at x = +-inf, where no bound is needed.
      if kind == "forward":
        expected64 = mish64(x64)
        sensitivity = np.abs(expected64) + np.abs(x64 * slope64)
      else:
        expected64 = slope64 if g is None else slope64 * _as64(g)
        sensitivity = np.abs(slope64) + np.abs(x64 * mish_second_derivative64(x64))
        sensitivity = sensitivity if g is None else sensitivity * np.abs(_as64(g))
    assert_within_condition_bound(actual, expected64, sensitivity, self.float32_ulps, kind)
    if not self.exp_as_xla:
      return
    if kind == "forward":
      xla = elementwise_on_buckets(functools.partial(activations.mish, implementation="xla"), x)
    else:
      xla = elementwise_on_buckets(activations.mish_grad, x.astype(np.float32))
      xla = (xla if g is None else xla * np.asarray(g, np.float32)).astype(x.dtype)
    assert_ulp_close(actual, xla, _max_ulp(x.dtype), f"{kind} vs XLA")

  def _mish(self, x, **kwargs):
    return mish_kernels.mish(x, interpret=self.interpret, **kwargs)

  @pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=DTYPE_IDS)
  def test_every_16_bit_input_correctly_rounded(self, dtype):
    """The forward kernel over all 2^16 bit patterns: float64 rounded once, NaN for NaN."""
    x = np.arange(2**16, dtype=np.uint16).view(jnp.dtype(dtype))
    y = np.asarray(self.run_kernel(mish_kernels.mish_forward, jnp.asarray(x)))
    expected = mish64(_as64(x)).astype(x.dtype)
    nan = np.isnan(_as64(x))
    np.testing.assert_array_equal(np.isnan(_as64(y)), nan)
    wrong = (y.view(np.uint16) != expected.view(np.uint16)) & ~nan
    assert not wrong.any(), (x[wrong][:8], y[wrong][:8], expected[wrong][:8])

  @pytest.mark.parametrize("size", [3 * 4096, 3 * 4096 + 1000 + 77], ids=["whole", "ragged"])
  def test_arrays_past_int32_run_as_several_launches(self, size, monkeypatch):
    """The split that arrays of 2^31 elements and more take, at a size the interpreter runs."""
    monkeypatch.setattr(mish_kernels, "_MAX_INDEX", 4096 + 255)
    monkeypatch.setattr(mish_kernels, "LAUNCH_ELEMENTS", 4096)
    x = jnp.asarray(random_numpy((size,), jnp.bfloat16, seed=4))
    g = jnp.asarray(random_numpy((size,), jnp.bfloat16, seed=5, scale=1.0))
    self.check_all_paths(x, g, derivative=True, block_size=1024, num_ctas=3)

  @pytest.mark.parametrize(
    "shape, dtype", CASES, ids=[f"{shape}-{jnp.dtype(dtype).name}" for shape, dtype in CASES]
  )
  def test_all_paths_match_references(self, shape, dtype):
    x = jnp.asarray(random_numpy(shape, dtype))
    g = jnp.asarray(random_numpy(shape, dtype, seed=1, scale=1.0))
    # The derivative kernel is the forward one with another function: checked where the blocks
    # are of every kind (and at the special values).
    self.check_all_paths(x, g, derivative=shape == (20011,), **SMALL_TUNING)

  @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
  def test_a_million_ragged_elements(self, dtype):
    # 15 full blocks, a partial one of 16896 elements and a 67-element tail.
    x = jnp.asarray(random_numpy((1000003,), dtype, seed=2))
    g = jnp.asarray(random_numpy((1000003,), dtype, seed=3, scale=1.0))
    self.check_all_paths(x, g)  # The default tuning: big blocks under the interpreter.

  @pytest.mark.parametrize(
    "tuning",
    [
      dict(block_size=128, num_stages=1, num_ctas=1),
      dict(block_size=256, num_stages=2, num_ctas=4),
      dict(block_size=512, num_stages=4, num_ctas=2),
      dict(block_size=1024, num_stages=2, num_ctas=100),
      dict(block_size=mish_kernels.DEFAULT_BLOCK_SIZE),  # What a Hopper GPU runs.
    ],
    ids=["128x1x1", "256x2x4", "512x4x2", "1024x2x100", "gpu-default"],
  )
  def test_tuning_does_not_change_the_result(self, tuning):
    x = random_array((3, 6667), jnp.bfloat16)
    reference = self.run_kernel(mish_kernels.mish_forward, x)
    np.testing.assert_array_equal(
      self.run_kernel(mish_kernels.mish_forward, x, **tuning), reference
    )
    self.assert_matches(reference, x, "forward")

  def test_custom_vjp_runs_the_kernels(self):
    x = random_array((20011,), jnp.float32, seed=4)
    g = random_array((20011,), jnp.float32, seed=5, scale=1.0)
    y, vjp = jax.vjp(functools.partial(self._mish, **SMALL_TUNING), x)
    self.assert_no_race()
    (dx,) = vjp(g)
    self.assert_no_race()
    self.assert_matches(y, x, "forward")
    self.assert_matches(dx, x, "backward", g)
    if self.exp_as_xla:  # And against the plain formula with autodiff's derivative.
      np.testing.assert_allclose(y, jax.nn.mish(x), rtol=2e-6, atol=1e-30)
      _, jax_vjp = jax.vjp(jax.nn.mish, x)
      np.testing.assert_allclose(dx, jax_vjp(g)[0], rtol=1e-5, atol=1e-6)

  @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
  def test_special_values(self, dtype):
    finfo = jnp.finfo(dtype)
    x = jnp.array(
      [-jnp.inf, finfo.min, -1e4, -150.0, -104.0, -90.0, -20.0, -1.0, -0.0, 0.0, finfo.tiny]
      + [1.0, 19.9, 20.0, 20.5, 100.0, finfo.max, jnp.inf, jnp.nan],
      jnp.float32,
    ).astype(dtype)
    y = np.asarray(self.run_kernel(mish_kernels.mish_forward, x))
    slope = np.asarray(self.run_kernel(mish_kernels.mish_derivative, x))
    self.assert_matches(y, x, "forward")
    self.assert_matches(slope, x, "derivative")
    # The limits, exactly: mish(-inf) = 0, mish(inf) = inf, mish'(-inf) = 0, mish'(inf) = 1; big
    # inputs are their own Mish; -0 stays -0.
    expected_y = np.array([0.0, 100.0, finfo.max, np.inf], dtype)
    np.testing.assert_array_equal(y[[0, -4, -3, -2]], expected_y)
    np.testing.assert_array_equal(slope[[0, 1, -4, -3, -2]], np.array([0, 0, 1, 1, 1], dtype))
    assert np.signbit(y[8]) and y[8] == 0
    assert np.isnan(y[-1]) and np.isnan(slope[-1])

  def test_jit_vmap_grad(self):
    x = random_array((3, 50), jnp.float32)

    @jax.jit
    def per_row_grads(x):
      return jax.vmap(jax.grad(lambda row: jnp.sum(self._mish(row) ** 2)))(x)

    # The cotangent: 2 mish(x), as the forward kernel computes it.
    self.assert_matches(per_row_grads(x), x, "backward", 2 * self._mish(x))
    self.assert_no_race()
    # An unbatched cotangent is broadcast by the vmap rule.
    backward = functools.partial(mish_kernels.mish_backward, interpret=self.interpret)
    g = random_array((50,), jnp.float32, seed=1)
    dx = jax.vmap(backward, in_axes=(0, None))(x, g)
    self.assert_no_race()
    self.assert_matches(dx, x, "backward", jnp.broadcast_to(g, x.shape))

  def test_empty_and_scalar(self):
    assert self._mish(jnp.zeros((0, 3), jnp.float32)).shape == (0, 3)
    np.testing.assert_array_equal(self._mish(jnp.float32(1.0)), activations.mish(1.0))

  @pytest.mark.parametrize(
    "x, kwargs, error",
    [
      (np.ones(3, np.complex64), {}, TypeError),
      (np.ones(3, np.int32), {}, TypeError),
      (np.ones(3, np.float32), {"block_size": 100}, ValueError),
      (np.ones(3, np.float32), {"block_size": 64}, ValueError),
      (np.ones(3, np.float32), {"num_stages": 0}, ValueError),
      (np.ones(3, np.float32), {"num_ctas": 0}, ValueError),
    ],
  )
  def test_bad_arguments(self, x, kwargs, error):
    with pytest.raises(error):
      self._mish(x, **kwargs)


class TestMishKernelInterpret(MishKernelTestBase):
  interpret = InterpretGPUParams(detect_races=True, uninitialized_memory="nan")

  def assert_no_race(self) -> None:
    assert not interpret_pallas_call.get_races().races_found, "the race detector found a race"

  @pytest.fixture(autouse=True)
  def _reset_interpreter(self):
    yield
    # An exception inside the interpreter leaves its state behind for the next kernel.
    interpret_pallas_call.reset_gpu_interpret_mode_state()

  def test_interpret_mode_poisons_outputs(self):
    """The premise of the 'fully written' checks: unwritten output elements come back NaN."""

    @functools.partial(
      plgpu.kernel,
      out_type=jax.ShapeDtypeStruct((256,), jnp.float32),
      scratch_types=[plgpu.SMEM((128,), jnp.float32), plgpu.Barrier()],
      interpret=self.interpret,
    )
    def copy_first_half(x_gmem, y_gmem, smem, barrier):
      plgpu.copy_gmem_to_smem(x_gmem.at[pl.ds(0, 128)], smem, barrier)
      plgpu.barrier_wait(barrier)
      plgpu.copy_smem_to_gmem(smem, y_gmem.at[pl.ds(0, 128)])
      plgpu.wait_smem_to_gmem(0)

    y = np.asarray(copy_first_half(jnp.ones((256,), jnp.float32)))
    assert (y[:128] == 1).all() and np.isnan(y[128:]).all()

  def test_race_detector_sees_overlapping_blocks(self):
    """The premise of the race checks: two threads writing one element are caught."""

    @functools.partial(
      plgpu.kernel,
      out_type=jax.ShapeDtypeStruct((128,), jnp.float32),
      num_threads=2,
      thread_name="thread",
      interpret=self.interpret,
    )
    def both_write_element_0(y_gmem):
      y_gmem[0] = jax.lax.axis_index("thread").astype(jnp.float32)

    jax.block_until_ready(both_write_element_0())
    assert interpret_pallas_call.get_races().races_found

  def test_shared_memory_limit_only_when_compiled(self):
    # The interpreter runs blocks of 2**16 by default (test_a_million_ragged_elements); a Hopper
    # CTA cannot.
    x = random_array((300,), jnp.float32)
    with pytest.raises(ValueError, match="shared memory"):
      mish_kernels.mish(x, **BIG_TUNING)
    with pytest.raises(ValueError, match="shared memory"):
      mish_kernels.mish_backward(x, x, block_size=4096, num_stages=7)

  def test_true_is_default_interpret_params(self):
    x = random_array((500,), jnp.float16)
    assert_ulp_close(mish_kernels.mish(x, interpret=True), activations.mish(x), 1, "f16")

  def test_pallas_implementation_on_cpu_is_interpreted(self):
    x = random_array((4, 130), jnp.float32)
    assert_ulp_close(mish_jax.mish(x, implementation="pallas"), activations.mish(x), 2, "f32")


@pytest.mark.skipif(not mish_jax.pallas_compiles(), reason="the kernels compile on Hopper GPUs")
class TestMishKernelCompiled(MishKernelTestBase):
  interpret = False
  # The GPU's exp (ex2.approx, 2 ulp) is not the CPU's: only the float64 bound, with room for it.
  exp_as_xla = False
  float32_ulps = 8


# The compiled tests' float64 bound, checked here against a GPU-like float32 evaluation: e^x off
# by ex2.approx's 2 ulp, and the x * log2(e) it takes rounded to float32.


def _mish_and_slope_with_gpu_exp(x: np.ndarray, exp_error: float) -> tuple[np.ndarray, ...]:
  """The kernels' float32 formulas (kernels/common.py) in NumPy, with a GPU-like e^x."""
  f32 = np.float32
  x = x.astype(f32)
  x_c = np.clip(x, f32(-150), f32(20))
  scaled = (x_c * f32(np.log2(np.e))).astype(f32)
  t = (np.exp2(scaled.astype(np.float64)) * (1 + exp_error)).astype(f32)
  n = t * (t + f32(2))
  d = n + f32(2)
  y = np.where(x > 20, x, x_c * (n / d))
  slope = np.where(x > 20, f32(1), (n * d + f32(4) * x_c * (t * (f32(1) + t))) / (d * d))
  return y, slope


@pytest.mark.parametrize("exp_error", [-(2.0**-22), 2.0**-22])
def test_float64_bound_admits_a_gpu_exp_and_nothing_worse(exp_error):
  # Dense around mish's minimum (mish' = 0 at -1.19) and 0, then the whole range.
  x64 = np.concatenate([np.linspace(-1.3, -1.1, 20001), np.linspace(-1e-3, 1e-3, 2001)])
  x64 = np.concatenate([x64, np.linspace(-40, 40, 80001)]).astype(np.float32).astype(np.float64)
  y, slope = _mish_and_slope_with_gpu_exp(x64, exp_error)
  y64, slope64 = mish64(x64), mish_grad64(x64)
  y_sensitivity = np.abs(y64) + np.abs(x64 * slope64)
  slope_sensitivity = np.abs(slope64) + np.abs(x64 * mish_second_derivative64(x64))
  ulps = TestMishKernelCompiled.float32_ulps
  assert_within_condition_bound(y, y64, y_sensitivity, ulps, "forward")
  assert_within_condition_bound(slope, slope64, slope_sensitivity, ulps, "derivative")
  # An error in the fourth significant digit is still caught.
  with pytest.raises(AssertionError, match="times the bound"):
    assert_within_condition_bound(y * np.float32(1 + 1e-4), y64, y_sensitivity, ulps)
  with pytest.raises(AssertionError, match="times the bound"):
    assert_within_condition_bound(slope + np.float32(1e-4), slope64, slope_sensitivity, ulps)


# The block plan: every element in exactly one block of exactly one CTA.


@pytest.mark.parametrize("block_size", [128, 1024, 4096])
@pytest.mark.parametrize("num_ctas", [1, 3, 264])
def test_blocks_partition_every_size(block_size, num_ctas):
  rng = np.random.default_rng(block_size + num_ctas)
  sizes = [1, 127, 128, 129, block_size - 1, block_size, block_size + 1, 1000003]
  for size in sizes + list(rng.integers(1, 50 * block_size, 20)):
    plan = block_plan.BlockPlan(int(size), block_size)
    written = np.zeros(plan.size, np.int64)
    blocks_seen = []
    for first, count, start, length, is_tail in plan.windows():
      assert length % mish_kernels.LANES == 0 and length <= max(block_size, 128)
      for block in range(first, first + count):
        blocks_seen.append(block)
        if is_tail:
          written[plan.main_size :] += 1
        else:
          offset = start + (block - first) * length
          assert offset + length <= plan.main_size, "a copy past the end of its array"
          written[offset : offset + length] += 1
    np.testing.assert_array_equal(written, 1)
    assert sorted(blocks_seen) == list(range(plan.num_blocks))
    # CTA c takes blocks c, c + n, ...: each block once.
    ctas = min(num_ctas, plan.num_blocks)
    steps = [(plan.num_blocks - 1 - c) // ctas + 1 for c in range(ctas)]
    owned = sorted(c + s * ctas for c in range(ctas) for s in range(steps[c]))
    assert owned == list(range(plan.num_blocks))


# Lowering for CUDA: every public path, in every dtype, at every ragged size.

LOWERING_SIZES = [1, 127, 129, 1000003]


def _grad_of_mish(x):
  return jax.grad(lambda v: mish_kernels.mish(v).astype(jnp.float32).sum())(x)


def _zeros(shape, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("size", LOWERING_SIZES)
@pytest.mark.parametrize("path", ["forward", "backward", "derivative"], ids=lambda p: p)
def test_lowers_to_mosaic_gpu(path, size, dtype):
  x = _zeros((size,), dtype)
  fn, args = {
    "forward": (mish_kernels.mish_forward, (x,)),
    "backward": (mish_kernels.mish_backward, (x, x)),
    "derivative": (mish_kernels.mish_derivative, (x,)),
  }[path]
  text = assert_lowers_to_mosaic_gpu(fn, *args)
  # Only a tail of fewer than 128 elements is padded, never the whole array.
  pads = [line for line in text.splitlines() if "stablehlo.pad" in line]
  assert bool(pads) == bool(size % mish_kernels.LANES) and len(pads) <= len(args)
  assert all(line.rpartition("->")[2].strip().startswith("tensor<128x") for line in pads), pads


@pytest.mark.parametrize("size", [2**31 - 1, 2**31, 2**33 + 77, 2**40], ids=str)
def test_every_launch_indexes_within_int32(size):
  """Traced, not allocated: past 2^31 - 1 elements, launches of 2^30 elements in a loop."""
  x = _zeros((size,), jnp.bfloat16)
  text = assert_lowers_to_mosaic_gpu(mish_kernels.mish_backward, x, x)
  calls = [line for line in text.splitlines() if "stablehlo.custom_call @mosaic_gpu" in line]
  sizes = [int(n) for line in calls for n in re.findall(r"tensor<(\d+)xbf16>", line)]
  assert sizes and max(sizes) <= 2**31 - 1, sizes
  ragged = size % mish_kernels.LAUNCH_ELEMENTS if size > 2**31 - 1 else size
  # One kernel in the loop, and one for a ragged remainder (each with its 128-element tail).
  assert len(calls) == 1 + (size > 2**31 - 1 and ragged > 0)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_batched_lowers_to_mosaic_gpu(dtype):
  shape = (4, 3, 129)
  x = _zeros(shape, dtype)
  assert_lowers_to_mosaic_gpu(jax.vmap(mish_kernels.mish_forward), x)
  g = _zeros(shape[1:], dtype)
  assert_lowers_to_mosaic_gpu(jax.vmap(mish_kernels.mish_backward, in_axes=(0, None)), x, g)
  assert_lowers_to_mosaic_gpu(jax.vmap(jax.vmap(mish_kernels.mish_derivative)), x)
  assert_lowers_to_mosaic_gpu(jax.vmap(_grad_of_mish), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_custom_vjp_lowers_to_mosaic_gpu(dtype):
  # The MNIST CNN's convolution activation, then the ragged million.
  assert_lowers_to_mosaic_gpu(_grad_of_mish, _zeros((64, 26, 26, 32), dtype))
  assert_lowers_to_mosaic_gpu(_grad_of_mish, _zeros((1000003,), dtype))


@pytest.mark.parametrize("path", ["forward", "backward", "derivative"], ids=lambda p: p)
def test_x64_mode_runs_and_lowers(path):
  # Under x64 a Python int in the pipeline's index arithmetic would become an int64.
  x = random_array((2500,), jnp.float32, seed=3)
  fn, args, expected = {
    "forward": (mish_kernels.mish_forward, (x,), mish64(x)),
    "backward": (mish_kernels.mish_backward, (x, x), mish_grad64(x) * _as64(x)),
    "derivative": (mish_kernels.mish_derivative, (x,), mish_grad64(x)),
  }[path]
  with jax.enable_x64(True):
    actual = fn(*args, **SMALL_TUNING, interpret=True)
    assert actual.dtype == jnp.float32
    np.testing.assert_allclose(_as64(actual), expected, rtol=1e-5, atol=1e-6)
    assert_lowers_to_mosaic_gpu(fn, *(_zeros(a.shape, a.dtype) for a in args))
